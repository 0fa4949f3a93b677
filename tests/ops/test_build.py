"""msvmamba_ops.build: cache location and key, direct loading of a cached build."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from msvmamba_ops import build
from msvmamba_ops.testing import require_backend

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


def test_unknown_extension():
    with pytest.raises(build.ExtensionError, match="unknown extension 'nope'"):
        build.load_extension('nope')


def test_cached_extension_loads_without_compiling(monkeypatch):
    """A cached build is opened directly: no ninja, no compiler, no cpp_extension.load."""
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
    require_backend('cpu')
    out = subprocess.run([sys.executable, '-m', 'msvmamba_ops.build', 'cpu'], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'cpu: cached' in out.stdout


# --------------------------------------------------------------------------------------
# GPU architectures of the CUDA build (no GPU needed)
# --------------------------------------------------------------------------------------
def test_default_arch_list_covers_current_gpus_with_ptx():
    targets = build.parse_cuda_arch_list(build.DEFAULT_CUDA_ARCH_LIST)
    assert {(t.major, t.minor) for t in targets} == {(8, 0), (8, 6), (8, 9), (9, 0), (10, 0),
                                                    (12, 0)}
    assert [(t.major, t.minor) for t in targets if t.ptx] == [(12, 0)]


@pytest.mark.parametrize('arch_list, capability, code', [
    ('8.0;9.0', (8, 0), 'sm_80'),
    ('8.0;9.0', (8, 9), 'sm_80'),          # a cubin runs on later minors of its major
    ('8.0;8.6;9.0', (8, 9), 'sm_86'),
    ('8.0;9.0', (10, 0), None),            # B200: no cubin, no PTX -> no kernel image
    ('8.0;9.0', (7, 5), None),
    ('8.0;9.0+PTX', (10, 0), 'compute_90 PTX'),
    ('8.0;9.0+PTX', (8, 6), 'sm_80'),      # PTX of 9.0 cannot run on 8.6
    ('9.0a;10.0', (9, 0), 'sm_90a'),
    ('9.0a', (9, 1), None),                # arch-specific cubins only on their own GPU
    ('10.0;12.0+PTX', (12, 1), 'sm_120'),
    ('10.0;12.0+PTX', (11, 0), None),     # Thor: PTX of 12.0 is too new for 11.0
    (build.DEFAULT_CUDA_ARCH_LIST, (10, 3), 'sm_100'),
    (build.DEFAULT_CUDA_ARCH_LIST, (13, 0), 'compute_120 PTX'),
    ('Hopper', (9, 0), 'unknown'),
])
def test_code_for_device(arch_list, capability, code):
    assert build.code_for_device(arch_list, capability) == code


@pytest.fixture
def fake_gpu(monkeypatch):
    """``fake_gpu(capability, built_arch_list)``: the device query, the built arch list and
    the loaded library of cuda_scan monkeypatched; fresh dispatcher warnings."""
    from msvmamba_ops import cuda_scan
    from msvmamba_ops import scan as scan_mod

    def install(capability, built):
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
        monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
        monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda index=None: capability)
        monkeypatch.setattr(torch.cuda, 'get_device_name', lambda index=None: 'Fake GPU')
        monkeypatch.setattr(build, 'built_cuda_arch_list', lambda name='cuda': built)
        monkeypatch.setattr(cuda_scan, '_module', lambda: object())
        monkeypatch.setattr(cuda_scan, '_missing', False)
        monkeypatch.setattr(cuda_scan, '_device_reasons', {})
        monkeypatch.setattr(scan_mod, '_warned', set())
        monkeypatch.delenv('MSVMAMBA_SCAN_BACKEND', raising=False)
        return cuda_scan

    return install


def test_cuda_backend_on_a_gpu_it_was_built_for(fake_gpu):
    import warnings
    import msvmamba_ops
    cuda_scan = fake_gpu((9, 0), build.DEFAULT_CUDA_ARCH_LIST)
    assert cuda_scan.unavailable_reason('cuda', torch.float16) is None
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert msvmamba_ops.resolve_backend('cuda', torch.float16) == 'cuda'


def test_arch_mismatch_falls_back_to_triton_with_one_warning(fake_gpu):
    pytest.importorskip('triton')
    import msvmamba_ops
    cuda_scan = fake_gpu((12, 0), '8.0;8.6;8.9;9.0')  # an RTX 50xx, an old sm_80..90 build
    reason = cuda_scan.unavailable_reason('cuda', torch.float16)
    assert 'no kernel for this GPU (Fake GPU, compute capability 12.0)' in reason
    assert 'TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0;12.0" python -m msvmamba_ops.build cuda' \
        in reason
    with pytest.warns(RuntimeWarning) as record:
        for _ in range(3):
            assert msvmamba_ops.resolve_backend('cuda', torch.float16) == 'triton'
    messages = [str(w.message) for w in record if 'fast cuda kernel' in str(w.message)]
    assert len(messages) == 1 and 'TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0;12.0"' in messages[0]


def test_cuda_build_records_its_arch_list(monkeypatch, tmp_path):
    """The stamp of a CUDA build names its arch list: loading (build=False) takes a build
    for any list, building again for another list does not count it as built."""
    monkeypatch.setenv('MSVMAMBA_CACHE', str(tmp_path))
    monkeypatch.setenv('TORCH_CUDA_ARCH_LIST', '9.0')
    directory = build.build_dir('cuda')
    directory.mkdir(parents=True)
    (directory / f'{build.EXTENSIONS["cuda"].module}.so').write_bytes(b'')
    (directory / build._STAMP).write_text(build._stamp_text('cuda', directory))
    assert build.built_cuda_arch_list('cuda') == '9.0'
    assert build.is_built('cuda')
    monkeypatch.setenv('TORCH_CUDA_ARCH_LIST', '9.0;10.0')
    assert build.build_dir('cuda') == directory  # one folder per source version
    assert not build.is_built('cuda') and build.is_built('cuda', any_arch=True)


def test_print_cuda_env_is_shell_for_eval(monkeypatch):
    if build.buildable('cuda') is not None:
        pytest.skip(f'no CUDA build here: {build.buildable("cuda")}')
    monkeypatch.setenv('TORCH_CUDA_ARCH_LIST', '9.0')
    out = subprocess.run([sys.executable, '-m', 'msvmamba_ops.build', '--print-cuda-env'],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    script = out.stdout + 'echo "$CUDA_HOME|$TORCH_CUDA_ARCH_LIST"\n'
    home, arch = subprocess.run(['bash', '-c', 'eval "$(cat)"'], input=script, text=True,
                                capture_output=True, check=True).stdout.strip().split('|')
    assert arch == '9.0'
    assert build._has_cudart(Path(home)), home
    assert 'export CPATH=' in out.stdout and '/nvidia/' in out.stdout


def test_failed_cpu_probe_is_remembered(monkeypatch, tmp_path):
    """Without a build, the dispatcher's probe fails once; later calls neither hash the
    sources again nor touch the disk."""
    from msvmamba_ops import cpu_scan
    monkeypatch.setenv('MSVMAMBA_CACHE', str(tmp_path))
    monkeypatch.delitem(build._LOADED, 'cpu', raising=False)
    monkeypatch.setattr(cpu_scan, '_failed_probes', {})
    hashed, key = [], build.cache_key
    monkeypatch.setattr(build, 'cache_key', lambda spec: hashed.append(1) or key(spec))
    first = cpu_scan.unavailable_reason()
    hashes = len(hashed)
    assert 'not built' in first and hashes > 0
    assert cpu_scan.unavailable_reason() == first and len(hashed) == hashes


def test_local_arch_list_is_the_visible_gpus_capped_with_ptx(monkeypatch):
    """tools/setup.sh's default with FORCE_CUDA=1 on a GPU machine: the visible GPUs'
    architectures, capped at the newest this torch knows, PTX of the newest."""
    caps = {0: (9, 0), 1: (12, 1), 2: (9, 0)}
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: len(caps))
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda index=None: caps[index])
    monkeypatch.setattr(torch.cuda, 'get_arch_list', lambda: ['sm_80', 'sm_90', 'sm_100',
                                                               'sm_120', 'compute_120'])
    assert build.local_cuda_arch_list() == '9.0;12.0+PTX'
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert build.local_cuda_arch_list() is None
