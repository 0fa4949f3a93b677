"""Build and load the compiled parts of msvmamba_ops.

Extensions are built with ``torch.utils.cpp_extension.load`` (ninja) into a cache folder
outside the clone::

    ${MSVMAMBA_CACHE:-${XDG_CACHE_HOME:-~/.cache}/msvmamba-mm}/ext/<name>-<key>

where ``<key>`` hashes the sources, the flags, the torch/CUDA/Python versions, the machine
(and the CUDA arch list for CUDA extensions). A fresh clone with unchanged sources reuses the
build; once a build succeeded, loading opens the shared library directly (no ninja run).

``python -m msvmamba_ops.build`` prebuilds every extension that can be built here (CUDA ones
only where ``nvcc`` is found); ``tools/setup.sh`` runs it.

To add an extension, add one entry to :data:`EXTENSIONS`.
"""
import dataclasses
import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

HERE = Path(__file__).resolve().parent
CSRC = HERE / 'csrc'

# Flags for every C++ file. Vectorisation without -march=native: the CPU kernel carries
# AVX2/AVX-512 copies chosen at run time. No -ffast-math (it breaks NaN/Inf propagation);
# only the safe parts of it: FMA contraction, no errno, no trapping math.
COMMON_CFLAGS = ['-O3', '-ffp-contract=fast', '-fno-math-errno', '-fno-trapping-math']
OPENMP_CFLAGS = ['-fopenmp']
OPENMP_LDFLAGS = ['-fopenmp']
# Default CUDA architectures (README: sm_80/86/89/90); TORCH_CUDA_ARCH_LIST overrides.
DEFAULT_CUDA_ARCH_LIST = '8.0;8.6;8.9;9.0'


@dataclasses.dataclass(frozen=True)
class Extension:
    """One compiled extension.

    Attributes:
        module: name of the built library (``<module>.so``; TORCH_EXTENSION_NAME).
        sources: source files, relative to ``msvmamba_ops/``.
        headers: other files the build depends on (hashed into the cache key).
        cflags, cuda_cflags, ldflags: extra flags for the C++ compiler, nvcc and the linker.
        cuda: whether it needs nvcc (built only where nvcc is found).
        python_module: True for a pybind11 module (loaded with importlib); False for a
            library that registers torch ops with TORCH_LIBRARY (loaded with
            ``torch.ops.load_library``); ``op_namespace`` then names its ``torch.ops``
            namespace, which :func:`load_extension` returns.
    """
    module: str
    sources: Sequence[str]
    headers: Sequence[str] = ()
    cflags: Sequence[str] = ()
    cuda_cflags: Sequence[str] = ()
    ldflags: Sequence[str] = ()
    cuda: bool = False
    python_module: bool = True
    op_namespace: Optional[str] = None


EXTENSIONS: Dict[str, Optional[Extension]] = {
    # Fused CPU selective scan (forward + backward) and the fused inference passes of the
    # backbone's token mixer and ConvFFN; ops torch.ops.msvmamba_cpu.{fwd,bwd,isa,ms2d_branch,
    # convffn_dwconv_gelu}.
    'cpu': Extension(
        module='msvmamba_cpu_scan',
        sources=['csrc/cpu/selective_scan_cpu.cpp', 'csrc/cpu/ms2d_cpu.cpp',
                 'csrc/cpu/convffn_cpu.cpp'],
        headers=['csrc/cpu/cpu_common.h'],
        cflags=COMMON_CFLAGS + OPENMP_CFLAGS,
        ldflags=OPENMP_LDFLAGS,
        python_module=False,
        op_namespace='msvmamba_cpu'),
}

# Compiled CUDA selective scan, ops torch.ops.msvmamba_cuda.{fwd,bwd,config}
# (msvmamba_ops/cuda_scan.py loads it with load_extension('cuda')): kernels in the .cu (nvcc
# never sees the torch headers), binding in the .cpp. nvcc builds the arch list's targets in
# parallel (--threads).
# 'cuda_emulated' (torch.ops.msvmamba_cuda_emulated) is the same kernels and binding compiled
# for the CPU (std::thread per CUDA thread, csrc/cuda/scan_emulate.h):
# tests/ops/test_cuda_emulated.py checks the kernels' logic with it where there is no GPU.
_CUDA_SCAN_HEADERS = ['csrc/cuda/selective_scan.h', 'csrc/cuda/scan_platform.cuh']
EXTENSIONS['cuda'] = Extension(
    module='msvmamba_cuda_scan',
    sources=['csrc/cuda/selective_scan.cpp', 'csrc/cuda/selective_scan.cu'],
    headers=_CUDA_SCAN_HEADERS,
    cflags=['-O3'],
    cuda_cflags=['-O3', '--threads=4'],
    cuda=True,
    python_module=False,
    op_namespace='msvmamba_cuda')
EXTENSIONS['cuda_emulated'] = Extension(
    module='msvmamba_cuda_scan_emulated',
    sources=['csrc/cuda/selective_scan.cpp', 'csrc/cuda/selective_scan_emulated.cpp'],
    headers=_CUDA_SCAN_HEADERS + ['csrc/cuda/selective_scan.cu', 'csrc/cuda/scan_emulate.h'],
    cflags=['-O1', '-DMSVMAMBA_SCAN_EMULATE'],
    python_module=False,
    op_namespace='msvmamba_cuda_emulated')


class ExtensionError(RuntimeError):
    """An extension is unknown, cannot be built here, or failed to build/load."""


def cache_root() -> Path:
    """The cache folder for built extensions (outside the clone)."""
    root = os.environ.get('MSVMAMBA_CACHE')
    if not root:
        xdg = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
        root = os.path.join(xdg, 'msvmamba-mm')
    return Path(root) / 'ext'


def find_nvcc() -> Optional[str]:
    """Path of nvcc (from CUDA_HOME, else PATH), or None."""
    cuda_home = os.environ.get('CUDA_HOME') or os.environ.get('CUDA_PATH')
    if cuda_home and (Path(cuda_home) / 'bin' / 'nvcc').exists():
        return str(Path(cuda_home) / 'bin' / 'nvcc')
    return shutil.which('nvcc')


def _has_cudart(root: Path) -> bool:
    return ((root / 'lib64' / 'libcudart.so').exists()
            or any(root.glob('targets/*/lib/libcudart.so')))


def cuda_toolkit_root(nvcc: str) -> str:
    """The CUDA toolkit behind ``nvcc``: the folder whose lib64/ holds libcudart.so.

    nvcc may be a wrapper script elsewhere (here /usr/local/bin/nvcc execs
    /usr/local/cuda-13.0/bin/nvcc), so ask nvcc itself: ``nvcc --dryrun`` prints the
    toolkit's ``TOP``. Falls back to the parent of nvcc's (symlink-resolved) folder.
    """
    candidates = []
    try:
        res = subprocess.run([nvcc, '--dryrun', '-c', '-x', 'cu', os.devnull, '-o', os.devnull],
                             capture_output=True, text=True, timeout=120)
        lines = (res.stdout + res.stderr).splitlines()
        candidates += [ln.split('=', 1)[1].strip() for ln in lines if ln.startswith('#$ TOP=')]
    except (OSError, subprocess.SubprocessError):
        pass
    candidates.append(str(Path(os.path.realpath(nvcc)).parent.parent))
    for cand in candidates:
        root = Path(os.path.normpath(cand))
        if _has_cudart(root):
            return str(root)
    return os.path.normpath(candidates[-1])


def cuda_arch_list() -> str:
    return os.environ.get('TORCH_CUDA_ARCH_LIST') or DEFAULT_CUDA_ARCH_LIST


def _spec(name: str) -> Extension:
    if name not in EXTENSIONS:
        raise ExtensionError(f'msvmamba_ops: unknown extension {name!r}; '
                             f'known: {sorted(EXTENSIONS)}')
    spec = EXTENSIONS[name]
    if spec is None:
        raise ExtensionError(f'msvmamba_ops: the {name!r} extension is not available in this '
                             'version (no entry in msvmamba_ops/build.py EXTENSIONS)')
    return spec


def cache_key(spec: Extension) -> str:
    """Hash of everything that decides the built library."""
    h = hashlib.sha256()
    for rel in list(spec.sources) + list(spec.headers):
        h.update(rel.encode())
        h.update((HERE / rel).read_bytes())
    parts = [
        repr(list(spec.cflags)), repr(list(spec.cuda_cflags)), repr(list(spec.ldflags)),
        spec.module, str(spec.python_module), torch.__version__, str(torch.version.cuda),
        sys.implementation.cache_tag or '', platform.machine(), platform.system(),
        os.environ.get('CXX', ''),
    ]
    if spec.cuda:
        parts += [cuda_arch_list(), os.environ.get('CC', '')]
    h.update('\0'.join(parts).encode())
    return h.hexdigest()[:16]


def build_dir(name: str) -> Path:
    return cache_root() / f'{name}-{cache_key(_spec(name))}'


_LOADED: Dict[str, object] = {}
_STAMP = 'msvmamba-build-ok'


def _library_path(spec: Extension, directory: Path) -> Path:
    return directory / f'{spec.module}.so'


def _open_built(spec: Extension, directory: Path):
    """Open a built library directly: no ninja, no compiler."""
    path = _library_path(spec, directory)
    if spec.python_module:
        loader = importlib.machinery.ExtensionFileLoader(spec.module, str(path))
        mod_spec = importlib.util.spec_from_file_location(spec.module, str(path), loader=loader)
        module = importlib.util.module_from_spec(mod_spec)
        loader.exec_module(module)
        return module
    torch.ops.load_library(str(path))
    return getattr(torch.ops, spec.op_namespace)


def _cuda_build_env() -> Dict[str, str]:
    """Environment a CUDA build needs here (see docs: CUDA_HOME, CPATH, arch list)."""
    env = {}
    nvcc = find_nvcc()
    if nvcc is None:
        raise ExtensionError('msvmamba_ops: nvcc not found (set CUDA_HOME or put nvcc on PATH)')
    if not os.environ.get('CUDA_HOME'):
        # torch guesses the parent of nvcc's folder, which may be a wrapper location
        # without lib64/libcudart: use the real toolkit root.
        env['CUDA_HOME'] = cuda_toolkit_root(nvcc)
    nv_include = Path(torch.__file__).resolve().parent.parent / 'nvidia'
    extra = [str(p) for p in sorted(nv_include.glob('cu*/include')) if p.is_dir()]
    if extra:
        env['CPATH'] = os.pathsep.join(extra + [os.environ.get('CPATH', '')]).rstrip(os.pathsep)
    env['TORCH_CUDA_ARCH_LIST'] = cuda_arch_list()
    return env


def is_built(name: str) -> bool:
    """True if the extension is in the cache for the current sources and flags."""
    spec = _spec(name)
    directory = build_dir(name)
    stamp = directory / _STAMP
    return (_library_path(spec, directory).exists() and stamp.exists()
            and stamp.read_text().strip() == directory.name)


def load_extension(name: str, build: bool = True, verbose: bool = False):
    """Return the extension ``name`` from :data:`EXTENSIONS`, building it if needed.

    Returns the Python module, or for op libraries (``python_module=False``) the
    ``torch.ops.<op_namespace>`` namespace. With ``build=False`` a missing build raises
    instead of compiling. Raises :class:`ExtensionError` (with the fix) on failure.
    """
    if name in _LOADED:
        return _LOADED[name]
    spec = _spec(name)
    directory = build_dir(name)
    if is_built(name):
        _LOADED[name] = _open_built(spec, directory)
        return _LOADED[name]
    if not build:
        raise ExtensionError(
            f'msvmamba_ops: the {name!r} extension is not built for these sources '
            f'(expected in {directory}); build it with `bash tools/setup.sh` or '
            '`python -m msvmamba_ops.build`')
    _LOADED[name] = _build(name, spec, directory, verbose)
    return _LOADED[name]


def _build(name: str, spec: Extension, directory: Path, verbose: bool):
    from torch.utils import cpp_extension
    env = _cuda_build_env() if spec.cuda else {}
    saved = {k: os.environ.get(k) for k in env}
    saved_cuda_home = cpp_extension.CUDA_HOME
    directory.mkdir(parents=True, exist_ok=True)
    print(f'[msvmamba_ops] building the {name!r} extension once into {directory} '
          '(a minute or more)...', file=sys.stderr, flush=True)
    os.environ.update(env)
    # cpp_extension reads CUDA_HOME once, when first imported (possibly before this call).
    cpp_extension.CUDA_HOME = os.environ.get('CUDA_HOME') if spec.cuda else saved_cuda_home
    try:
        cpp_extension.load(
            name=spec.module,
            sources=[str(HERE / s) for s in spec.sources],
            extra_cflags=list(spec.cflags),
            extra_cuda_cflags=list(spec.cuda_cflags),
            extra_ldflags=list(spec.ldflags),
            extra_include_paths=[str(CSRC)],
            build_directory=str(directory),
            with_cuda=spec.cuda,
            is_python_module=spec.python_module,
            verbose=verbose)
    except Exception as exc:  # compiler errors arrive as RuntimeError/CalledProcessError
        raise ExtensionError(
            f'msvmamba_ops: building the {name!r} extension in {directory} failed: {exc}\n'
            'Check that a C++20 compiler (g++ >= 10) and ninja are installed'
            + (', and nvcc matching torch.version.cuda' if spec.cuda else '')
            + '; rerun with `python -m msvmamba_ops.build --verbose` for the full log.') from exc
    finally:
        cpp_extension.CUDA_HOME = saved_cuda_home
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    tmp = directory / f'{_STAMP}.{os.getpid()}'
    tmp.write_text(directory.name + '\n')
    os.replace(tmp, directory / _STAMP)
    if spec.python_module:
        return _open_built(spec, directory)
    return getattr(torch.ops, spec.op_namespace)  # cpp_extension.load already loaded it


def buildable(name: str) -> Optional[str]:
    """None if the extension can be built here, else the reason why not."""
    spec = EXTENSIONS.get(name)
    if spec is None:
        return 'no entry in msvmamba_ops/build.py EXTENSIONS yet'
    if spec.cuda:
        if find_nvcc() is None:
            return 'nvcc not found (set CUDA_HOME or put nvcc on PATH)'
        if torch.version.cuda is None:
            return 'this torch is a CPU-only build'
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('names', nargs='*',
                        help=f'extensions (default: all of {sorted(EXTENSIONS)})')
    parser.add_argument('--verbose', action='store_true')
    args = parser.parse_args(argv)
    failed = 0
    for name in args.names or sorted(EXTENSIONS):
        reason = buildable(name)
        if reason is not None:
            print(f'[msvmamba_ops.build] {name}: skipped ({reason})')
            continue
        cached = is_built(name)
        t0 = time.time()
        try:
            load_extension(name, verbose=args.verbose)
        except ExtensionError as exc:
            print(f'[msvmamba_ops.build] {name}: FAILED\n{exc}', file=sys.stderr)
            failed += 1
            continue
        what = 'cached' if cached else f'built in {time.time() - t0:.0f} s'
        print(f'[msvmamba_ops.build] {name}: {what} ({build_dir(name)})')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
