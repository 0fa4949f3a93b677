"""msvmamba_ops.build: cache location and key, direct loading of a cached build."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from msvmamba_ops import build

REPO = Path(__file__).resolve().parents[2]


def test_cache_root_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv('MSVMAMBA_CACHE', str(tmp_path / 'c'))
    assert build.cache_root() == tmp_path / 'c' / 'ext'
    monkeypatch.delenv('MSVMAMBA_CACHE')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'x'))
    assert build.cache_root() == tmp_path / 'x' / 'msvmamba-mm' / 'ext'
    assert REPO not in build.cache_root().parents


def test_cache_key_tracks_sources_and_flags(monkeypatch):
    spec = build.EXTENSIONS['cpu']
    key = build.cache_key(spec)
    assert key == build.cache_key(spec)  # stable
    assert build.cache_key(dataclasses.replace(spec, cflags=list(spec.cflags) + ['-g'])) != key
    monkeypatch.setattr(torch, '__version__', torch.__version__ + '.other')
    assert build.cache_key(spec) != key
    assert build.build_dir('cpu').name.startswith('cpu-')


def test_unknown_and_unwritten_extensions(monkeypatch):
    with pytest.raises(build.ExtensionError, match="unknown extension 'nope'"):
        build.load_extension('nope')
    monkeypatch.setitem(build.EXTENSIONS, 'later', None)
    with pytest.raises(build.ExtensionError, match="'later' extension is not available"):
        build.load_extension('later')
    assert 'no entry' in build.buildable('later')


def test_cached_extension_loads_without_compiling(monkeypatch):
    """A cached build is opened directly: no ninja, no compiler, no cpp_extension.load."""
    from _scan_helpers import require_backend
    require_backend('cpu')  # builds it if this machine has not yet
    assert build.is_built('cpu')
    from torch.utils import cpp_extension

    def no_compile(*args, **kwargs):
        raise AssertionError('cpp_extension.load called for a cached extension')

    monkeypatch.setattr(cpp_extension, 'load', no_compile)
    monkeypatch.delitem(build._LOADED, 'cpu')
    ops = build.load_extension('cpu', build=False)
    assert ops.isa() in ('avx512', 'avx2', 'x86-64 baseline (sse2)', 'baseline')


def test_missing_build_without_build_flag(monkeypatch, tmp_path):
    monkeypatch.setenv('MSVMAMBA_CACHE', str(tmp_path))
    monkeypatch.delitem(build._LOADED, 'cpu', raising=False)
    with pytest.raises(build.ExtensionError, match='tools/setup.sh'):
        build.load_extension('cpu', build=False)


def test_build_cli_is_quick_when_cached():
    from _scan_helpers import require_backend
    require_backend('cpu')
    out = subprocess.run([sys.executable, '-m', 'msvmamba_ops.build', 'cpu'], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'cpu: cached' in out.stdout
