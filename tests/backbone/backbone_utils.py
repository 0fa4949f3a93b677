"""Shared data for the backbone tests: the reference files and small architectures that
run fast with the reference selective scan."""
import json
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
# The official key manifests are small and copied into the repo; the upstream reference
# vectors (20 MB) are read from the shared folder beside the checkout (../shared/reference),
# or from MSVMAMBA_REFERENCE_DIR; tests needing them skip if they are absent.
MANIFESTS = REPO / 'tests' / 'data' / 'reference'
REFERENCE = Path(os.environ.get('MSVMAMBA_REFERENCE_DIR', REPO.parent / 'shared' / 'reference'))

# Smallest widths/depths that still exercise every module of each architecture.
SMALL_MASTER = dict(base='tiny', dims=16, depths=(1, 1, 1, 1))
SMALL_V3 = dict(base='v3_tiny', dims=16, depths=(1, 1, 1, 1))
SMALL_V3_GATED = dict(base='v3_base', dims=16, depths=(1, 1, 1, 1))


def reference_path(name: str) -> Path:
    path = MANIFESTS / name
    if not path.exists():
        path = REFERENCE / name
    if not path.exists():
        pytest.skip(f'reference data {path} not available')
    return path


def load_manifest(name: str) -> dict:
    return json.loads(reference_path(f'{name}.json').read_text())


def load_vectors(name: str) -> dict:
    # Reference files we made ourselves: trusted, hence weights_only=False.
    return torch.load(reference_path(f'{name}.pt'), weights_only=False)


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute error relative to the largest reference magnitude."""
    return ((actual - expected).abs().max() / expected.abs().max()).item()
