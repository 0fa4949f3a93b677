"""The CUDA selective-scan extension.

* the built extension (tools/setup.sh builds it where nvcc exists) imports, exposes fwd/bwd,
  and holds cubins for every arch of the arch list it was built for (by default
  msvmamba_ops.build.DEFAULT_CUDA_ARCH_LIST: sm_80, sm_86, sm_89, sm_90, sm_100, sm_120 and
  PTX of sm_120; `cuobjdump --list-elf`, from the nvidia-cuda-cuobjdump wheel or the CUDA
  toolkit);
* with a GPU, fwd/bwd match the float64 reference: tests/gpu/test_scan_gpu.py (``-m gpu``).
The kernels' logic is tested without a GPU in test_cuda_emulated.py.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from msvmamba_ops import build


def _built_module():
    if build.buildable('cuda') is not None:
        pytest.skip(f'CUDA extension not buildable here: {build.buildable("cuda")}')
    if not build.is_built('cuda', any_arch=True):
        pytest.skip('CUDA extension not built (run `bash tools/setup.sh` on a machine with nvcc)')
    return build.build_dir('cuda') / f'{build.EXTENSIONS["cuda"].module}.so'


def test_built_extension_imports():
    _built_module()
    ops = build.load_extension('cuda', build=False)  # torch.ops.msvmamba_cuda
    for name in ('fwd', 'bwd', 'config'):
        assert hasattr(ops, name), name
    assert ops.config(128, 192, 3136, 1, 1, 132, True)[:2] == [32, 8]
    from msvmamba_ops import cuda_scan
    assert (cuda_scan.unavailable_reason('cuda') is None) == torch.cuda.is_available()


def find_cuobjdump():
    """cuobjdump from PATH, the nvidia-cuda-cuobjdump wheel or the CUDA toolkit, or None."""
    found = shutil.which('cuobjdump')
    if found:
        return found
    for entry in sys.path:
        hits = sorted(glob.glob(os.path.join(entry, 'nvidia', 'cu*', 'bin', 'cuobjdump')))
        if hits:
            return hits[-1]
    nvcc = build.find_nvcc()
    if nvcc:
        path = Path(build.cuda_toolkit_root(nvcc)) / 'bin' / 'cuobjdump'
        if path.exists():
            return str(path)
    return None


def test_built_extension_has_every_arch():
    library = _built_module()
    tool = find_cuobjdump()
    if tool is None:
        pytest.skip('cuobjdump not found (pip install nvidia-cuda-cuobjdump)')
    listing = subprocess.run([tool, '--list-elf', '--list-ptx', str(library)],
                             capture_output=True, text=True, timeout=120, check=True).stdout
    found = set(re.findall(r'\.(sm_\d+[af]?)\.cubin', listing))
    ptx = set(re.findall(r'\.(sm_\d+[af]?)\.ptx', listing))
    targets = build.parse_cuda_arch_list(build.built_cuda_arch_list('cuda'))  # what the stamp says
    wanted = {f'sm_{t.major}{t.minor}{t.suffix}' for t in targets}
    wanted_ptx = {f'sm_{t.major}{t.minor}' for t in targets if t.ptx}
    assert wanted <= found, f'cubins {sorted(found)}; expected {sorted(wanted)}\n{listing}'
    assert wanted_ptx <= ptx, f'PTX {sorted(ptx)}; expected {sorted(wanted_ptx)}\n{listing}'
    if build.built_cuda_arch_list('cuda') == build.DEFAULT_CUDA_ARCH_LIST:
        assert {'sm_80', 'sm_86', 'sm_89', 'sm_90', 'sm_100', 'sm_120'} <= found
        assert 'sm_120' in ptx


def test_build_skips_cleanly_without_nvcc(monkeypatch, capsys):
    monkeypatch.setattr(build, 'find_nvcc', lambda: None)
    assert build.main(['cuda']) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ['[msvmamba_ops.build] cuda: skipped (nvcc not found (set CUDA_HOME or put nvcc '
                   'on PATH))']


@pytest.mark.skipif(build.find_nvcc() is None, reason='no nvcc here')
def test_cuda_home_found_behind_a_wrapper_script(tmp_path):
    """CUDA_HOME for the build is the toolkit whose lib64 holds libcudart.so, also when the
    nvcc on PATH is a wrapper script elsewhere (as /usr/local/bin/nvcc on the CI machines)."""
    real = build.cuda_toolkit_root(build.find_nvcc())
    assert build._has_cudart(Path(real)), real
    wrapper = tmp_path / 'bin' / 'nvcc'
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {Path(real) / "bin" / "nvcc"} "$@"\n')
    wrapper.chmod(0o755)
    assert build.cuda_toolkit_root(str(wrapper)) == real
