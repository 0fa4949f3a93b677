"""Shared data for the backbone and deployment tests: the seeded reference files of the
upstream code (tests/data/seeded, see its README), the weight rule that rebuilds their
official state dicts, and small architectures that run fast with the reference scan."""
import importlib.util
import math
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
SEEDED_DIR = REPO / 'tests' / 'data' / 'seeded'
CONVERTER = REPO / 'tools' / 'model_converters' / 'msvmamba2mmpretrain.py'
# The six released architectures, each with a seeded_<arch>.pt.
VARIANTS = ('nano', 'micro', 'tiny', 'v3_tiny', 'v3_small', 'v3_base')
MASTER_VARIANTS = ('nano', 'micro', 'tiny')

# Smallest widths/depths that still exercise every module of each architecture.
SMALL_MASTER = dict(base='tiny', dims=16, depths=(1, 1, 1, 1))
SMALL_V3 = dict(base='v3_tiny', dims=16, depths=(1, 1, 1, 1))
SMALL_V3_GATED = dict(base='v3_base', dims=16, depths=(1, 1, 1, 1))


def load_converter():
    """The converter script as a module (to call its main() in-process)."""
    spec = importlib.util.spec_from_file_location('msvmamba2mmpretrain', CONVERTER)
    converter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(converter)
    return converter


def load_seeded(arch: str) -> dict:
    """The reference file of ``arch``. A missing file is an error, never a skip: these
    files are part of the repository."""
    path = SEEDED_DIR / f'seeded_{arch}.pt'
    if not path.is_file():
        raise FileNotFoundError(f'{path} is missing: it is tracked in the repository '
                                '(tests/data/seeded); restore it with git checkout')
    return torch.load(path, weights_only=True)  # tensors, strings and numbers only


def seeded_tensor(index: int, key: str, shape: Sequence[int]) -> torch.Tensor:
    """The value the weight rule gives official entry number ``index`` (first match)."""
    g = torch.Generator().manual_seed(7000 + index)
    shape = tuple(shape)
    if key.endswith('A_logs'):
        return torch.rand(shape, generator=g) * 0.7
    if key.endswith('Ds'):
        return 1 + 0.2 * torch.randn(shape, generator=g)
    if key.endswith('dt_projs_bias'):
        log_lo, log_hi = math.log(0.001), math.log(0.1)
        dt = torch.exp(torch.rand(shape, generator=g) * (log_hi - log_lo) + log_lo)
        return dt + torch.log(-torch.expm1(-dt))  # softplus inverse
    if len(shape) == 1:
        if 'norm' in key and key.endswith('weight'):
            return 1 + 0.1 * torch.randn(shape, generator=g)
        return 0.05 * torch.randn(shape, generator=g)
    return torch.randn(shape, generator=g) / math.sqrt(max(1, math.prod(shape[1:])))


def seeded_state_dict(entries: List[list], first_index: int = 0) -> Dict[str, torch.Tensor]:
    """Official state dict of ``[key, shape]`` entries, numbered from ``first_index``."""
    return OrderedDict((key, seeded_tensor(first_index + i, key, shape))
                       for i, (key, shape) in enumerate(entries))


def checksum_bound(key: str) -> float:
    """How far the checksums of the weight rule's tensor ``key`` may differ from the file's.
    Drawn values (rand/randn) are the same bits on every CPU: 1e-12. ``dt_projs_bias`` goes
    through float32 exp/expm1/log, whose last bit depends on the CPU's vector instructions
    (the files were made on an AMD EPYC; an Intel Xeon with AVX-512 differs by up to 1.7e-9):
    1e-8, still a million times below what a wrong fill gives (order 1)."""
    return 1e-8 if key.endswith('dt_projs_bias') else 1e-12


def assert_checksums(state_dict: Dict[str, torch.Tensor], checksums: torch.Tensor):
    """``[sum, abs_sum]`` (float64) of each tensor against the file's: a wrong fill is
    reported as such, before any output is compared."""
    ours = torch.tensor([[v.double().sum().item(), v.double().abs().sum().item()]
                         for v in state_dict.values()], dtype=torch.float64)
    assert ours.shape == checksums.shape, f'{len(ours)} tensors vs {len(checksums)} checksums'
    # a sum may cancel: its error is measured against the abs_sum
    err = (ours - checksums).abs().max(1).values / checksums[:, 1].clamp_min(1e-30)
    bound = torch.tensor([checksum_bound(key) for key in state_dict], dtype=torch.float64)
    worst = int((err / bound).argmax())
    assert err[worst] <= bound[worst], (f'seeded weight {list(state_dict)[worst]}: checksums '
                                        f'{ours[worst].tolist()} vs {checksums[worst].tolist()}')


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute error relative to the largest reference magnitude."""
    return ((actual - expected).abs().max() / expected.abs().max()).item()
