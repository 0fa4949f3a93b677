"""Build and load the compiled parts of msvmamba_ops.

Extensions are built with ``torch.utils.cpp_extension.load`` (ninja) into a cache folder
outside the clone::

    ${MSVMAMBA_CACHE:-${XDG_CACHE_HOME:-~/.cache}/msvmamba-mm}/ext/<name>-<key>

where ``<key>`` hashes the sources, the flags, the torch/CUDA/Python versions and the
machine. A fresh clone with unchanged sources reuses the build; once a build succeeded,
loading opens the shared library directly (no ninja run). A CUDA build records the GPU
architectures it was built for (``TORCH_CUDA_ARCH_LIST``) in its stamp file: building again
with another list rebuilds it, and :func:`built_cuda_arch_list` tells ``cuda_scan`` which
GPUs it runs on.

``python -m msvmamba_ops.build`` prebuilds every extension that can be built here (CUDA ones
only where ``nvcc`` is found); ``tools/setup.sh`` runs it. ``python -m msvmamba_ops.build
--print-cuda-env`` prints the shell settings a CUDA build needs here (CUDA_HOME, CPATH,
TORCH_CUDA_ARCH_LIST): ``tools/setup.sh`` evaluates them for mmcv's CUDA ops too.

To add an extension, add one entry to :data:`EXTENSIONS`.
"""
import dataclasses
import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

HERE = Path(__file__).resolve().parent
CSRC = HERE / 'csrc'

# Flags for every C++ file. Vectorisation without -march=native: the CPU kernel carries
# AVX2/AVX-512 copies chosen at run time. No -ffast-math (it breaks NaN/Inf propagation);
# only the safe parts of it: FMA contraction, no errno, no trapping math.
COMMON_CFLAGS = ['-O3', '-ffp-contract=fast', '-fno-math-errno', '-fno-trapping-math']
OPENMP_CFLAGS = ['-fopenmp']
OPENMP_LDFLAGS = ['-fopenmp']
# The sources are C++20 (std::bit_cast, std::barrier, std::atomic_ref): torch 2.14 compiles
# extensions as C++20 anyway, torch 2.8 and older as C++17 (the later -std flag wins).
CXX_STD = '-std=c++20'
# Default CUDA architectures: every current NVIDIA data-centre and desktop GPU (A100/A10,
# RTX 30xx, L4/L40/RTX 40xx, H100/H200, B200/GB200, RTX 50xx/RTX PRO) as cubins, plus PTX of
# the newest, which the driver compiles for later GPUs. TORCH_CUDA_ARCH_LIST overrides it.
DEFAULT_CUDA_ARCH_LIST = '8.0;8.6;8.9;9.0;10.0;12.0+PTX'


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


EXTENSIONS: Dict[str, Extension] = {
    # Fused CPU selective scan (forward + backward) and the fused inference passes of the
    # backbone's token mixer and ConvFFN, and the bf16 blocks' residual LayerNorm; ops
    # torch.ops.msvmamba_cpu.{fwd,bwd,isa,ms2d_branch,convffn_dwconv_gelu,residual_layer_norm}.
    'cpu': Extension(
        module='msvmamba_cpu_scan',
        sources=['csrc/cpu/selective_scan_cpu.cpp', 'csrc/cpu/ms2d_cpu.cpp',
                 'csrc/cpu/convffn_cpu.cpp', 'csrc/cpu/norm_cpu.cpp'],
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
    """The GPU architectures a CUDA build targets: TORCH_CUDA_ARCH_LIST, else the default."""
    return os.environ.get('TORCH_CUDA_ARCH_LIST') or DEFAULT_CUDA_ARCH_LIST


def local_cuda_arch_list() -> Optional[str]:
    """The visible GPUs' architectures with PTX of the newest (e.g. '9.0+PTX'), capped at
    the newest one this torch knows; None without a visible GPU."""
    if not torch.cuda.is_available():
        return None
    known = [(int(a[3:-1]), int(a[-1])) for a in torch.cuda.get_arch_list()
             if re.fullmatch(r'sm_\d+', a)]
    caps = sorted({min(torch.cuda.get_device_capability(i), max(known, default=(99, 9)))
                   for i in range(torch.cuda.device_count())})
    return ';'.join(f'{major}.{minor}' for major, minor in caps) + '+PTX'


@dataclasses.dataclass(frozen=True)
class CudaTarget:
    """One entry of an arch list: a ``major.minor`` cubin (``suffix`` 'a'/'f' for the
    arch-specific variants), plus PTX when ``ptx``."""
    major: int
    minor: int
    suffix: str = ''
    ptx: bool = False


def parse_cuda_arch_list(arch_list: str) -> Optional[List[CudaTarget]]:
    """The entries of a TORCH_CUDA_ARCH_LIST string ('8.0;9.0+PTX', spaces also separate);
    None if one is not of the numeric form (e.g. torch's names such as 'Hopper')."""
    targets = []
    for entry in arch_list.replace(' ', ';').split(';'):
        if not entry:
            continue
        match = re.fullmatch(r'(\d+)\.(\d+)([af]?)(\+PTX)?', entry.strip())
        if match is None:
            return None
        targets.append(CudaTarget(int(match[1]), int(match[2]), match[3], bool(match[4])))
    return targets


def code_for_device(arch_list: str, capability: Tuple[int, int]) -> Optional[str]:
    """What of a build for ``arch_list`` runs on a GPU of compute ``capability``:
    'sm_XY' (a cubin of the same major version and a minor not above the device's;
    arch-specific 'a'/'f' cubins only on their own GPU), else 'compute_XY PTX' (PTX of a
    capability up to the device's, compiled by the driver), else None: no kernel image for
    this GPU. An arch list that cannot be parsed (torch's names) is trusted: 'unknown'."""
    targets = parse_cuda_arch_list(arch_list)
    if targets is None:
        return 'unknown'
    major, minor = capability
    cubins = [t for t in targets if t.major == major
              and (t.minor == minor if t.suffix else t.minor <= minor)]
    if cubins:
        best = max(cubins, key=lambda t: t.minor)
        return f'sm_{best.major}{best.minor}{best.suffix}'
    ptx = [t for t in targets if t.ptx and not t.suffix and (t.major, t.minor) <= capability]
    if ptx:
        best = max(ptx, key=lambda t: (t.major, t.minor))
        return f'compute_{best.major}{best.minor} PTX'
    return None


def _spec(name: str) -> Extension:
    if name not in EXTENSIONS:
        raise ExtensionError(f'msvmamba_ops: unknown extension {name!r}; '
                             f'known: {sorted(EXTENSIONS)}')
    return EXTENSIONS[name]


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
    if spec.cuda:  # not the arch list: it is in the stamp (one folder per source version)
        parts += [os.environ.get('CC', '')]
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


def cuda_build_env(arch_list: Optional[str] = None) -> Dict[str, str]:
    """Environment a CUDA build against this torch needs here, for this package's
    extensions and for mmcv's CUDA ops alike:

    * CUDA_HOME: the toolkit root (kept when set). Unset, torch guesses the parent of
      nvcc's folder, which may be a wrapper location without lib64/libcudart;
    * CPATH: the include folders of the nvidia wheels torch depends on (cusparse.h and
      friends live there, not in the toolkit) before any CPATH already set;
    * TORCH_CUDA_ARCH_LIST: ``arch_list``, else :func:`cuda_arch_list`.
    """
    env = {}
    nvcc = find_nvcc()
    if nvcc is None:
        raise ExtensionError('msvmamba_ops: nvcc not found (set CUDA_HOME or put nvcc on PATH)')
    env['CUDA_HOME'] = os.environ.get('CUDA_HOME') or cuda_toolkit_root(nvcc)
    nv_include = Path(torch.__file__).resolve().parent.parent / 'nvidia'
    extra = [str(p) for p in sorted(nv_include.glob('cu*/include')) if p.is_dir()]
    if extra:
        env['CPATH'] = os.pathsep.join(extra + [os.environ.get('CPATH', '')]).rstrip(os.pathsep)
    env['TORCH_CUDA_ARCH_LIST'] = arch_list or cuda_arch_list()
    return env


def print_cuda_env() -> int:
    """``--print-cuda-env``: the :func:`cuda_build_env` settings as shell ``export`` lines
    (for ``eval``). The arch list: TORCH_CUDA_ARCH_LIST, else the visible GPUs' (with PTX),
    else the default list."""
    import shlex
    reason = buildable('cuda')
    if reason is not None:
        print(f'error: no CUDA build possible here: {reason}', file=sys.stderr)
        print('false')  # an unchecked eval of the output fails too
        return 1
    arch_list = (os.environ.get('TORCH_CUDA_ARCH_LIST') or local_cuda_arch_list()
                 or DEFAULT_CUDA_ARCH_LIST)
    env = cuda_build_env(arch_list)
    for key, value in env.items():
        print(f'export {key}={shlex.quote(value)}')
    return 0


def _stamp_text(name: str, directory: Path) -> str:
    lines = [directory.name]
    if _spec(name).cuda:
        lines.append(f'TORCH_CUDA_ARCH_LIST={cuda_arch_list()}')
    return '\n'.join(lines) + '\n'


def _read_stamp(name: str) -> Optional[List[str]]:
    """Lines of the build's stamp file, or None when there is no finished build."""
    spec, directory = _spec(name), build_dir(name)
    try:
        lines = (directory / _STAMP).read_text().splitlines()
    except OSError:
        return None
    if not lines or lines[0] != directory.name or not _library_path(spec, directory).exists():
        return None
    return lines


def built_cuda_arch_list(name: str = 'cuda') -> Optional[str]:
    """The TORCH_CUDA_ARCH_LIST the cached build of a CUDA extension was made for (None:
    not built)."""
    for line in _read_stamp(name) or ():
        if line.startswith('TORCH_CUDA_ARCH_LIST='):
            return line.split('=', 1)[1]
    return None


def is_built(name: str, any_arch: bool = False) -> bool:
    """True if the extension is in the cache for the current sources and flags (and, for
    a CUDA extension, unless ``any_arch``, for the current :func:`cuda_arch_list`)."""
    if _read_stamp(name) is None:
        return False
    return any_arch or not _spec(name).cuda or built_cuda_arch_list(name) == cuda_arch_list()


def load_extension(name: str, build: bool = True, verbose: bool = False):
    """Return the extension ``name`` from :data:`EXTENSIONS`, building it if needed.

    Returns the Python module, or for op libraries (``python_module=False``) the
    ``torch.ops.<op_namespace>`` namespace. With ``build=False`` a missing build raises
    instead of compiling, and a CUDA build for any arch list is taken (``cuda_scan`` checks
    the GPU against :func:`built_cuda_arch_list`); with ``build=True`` a CUDA build for
    another arch list is rebuilt. Raises :class:`ExtensionError` (with the fix) on failure.
    """
    if name in _LOADED:
        return _LOADED[name]
    spec = _spec(name)
    directory = build_dir(name)
    if is_built(name, any_arch=not build):
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
    env = cuda_build_env() if spec.cuda else {}
    saved = {k: os.environ.get(k) for k in env}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / _STAMP).unlink(missing_ok=True)  # a rebuild (other arch list) is not done yet
    print(f'[msvmamba_ops] building the {name!r} extension once into {directory} '
          '(a minute or more)...', file=sys.stderr, flush=True)
    os.environ.update(env)
    # cpp_extension reads CUDA_HOME once, when first imported: with the environment above
    # when that is now (no "No CUDA runtime is found" guess), else it is set below.
    from torch.utils import cpp_extension
    saved_cuda_home = cpp_extension.CUDA_HOME
    cpp_extension.CUDA_HOME = os.environ.get('CUDA_HOME') if spec.cuda else saved_cuda_home
    try:
        cpp_extension.load(
            name=spec.module,
            sources=[str(HERE / s) for s in spec.sources],
            extra_cflags=[CXX_STD] + list(spec.cflags),
            extra_cuda_cflags=[CXX_STD] + list(spec.cuda_cflags),
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
    tmp.write_text(_stamp_text(name, directory))
    os.replace(tmp, directory / _STAMP)
    if spec.python_module:
        return _open_built(spec, directory)
    return getattr(torch.ops, spec.op_namespace)  # cpp_extension.load already loaded it


def nvcc_version(nvcc: str) -> Optional[str]:
    """The CUDA release of ``nvcc`` ('13.0'), None if it cannot be run."""
    try:
        out = subprocess.run([nvcc, '--version'], capture_output=True, text=True,
                             timeout=120).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r'release (\d+\.\d+)', out)
    return match[1] if match else None


def buildable(name: str) -> Optional[str]:
    """None if the extension can be built here, else the reason why not."""
    spec = EXTENSIONS.get(name)
    if spec is None:
        return f'unknown extension {name!r} (known: {sorted(EXTENSIONS)})'
    if spec.cuda:
        nvcc = find_nvcc()
        if nvcc is None:
            return 'nvcc not found (set CUDA_HOME or put nvcc on PATH)'
        if torch.version.cuda is None:
            return 'this torch is a CPU-only build'
        release = nvcc_version(nvcc)
        # torch's cpp_extension refuses a toolkit of another major CUDA version
        if release and release.split('.')[0] != torch.version.cuda.split('.')[0]:
            return (f'nvcc ({nvcc}) is CUDA {release} but torch {torch.__version__} is built '
                    f'for CUDA {torch.version.cuda}: set CUDA_HOME to a CUDA '
                    f'{torch.version.cuda.split(".")[0]}.x toolkit')
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('names', nargs='*',
                        help=f'extensions (default: all of {sorted(EXTENSIONS)})')
    parser.add_argument('--verbose', action='store_true')
    parser.add_argument('--print-cuda-env', action='store_true',
                        help='print the shell settings a CUDA build needs here (CUDA_HOME, '
                        'CPATH, TORCH_CUDA_ARCH_LIST) as export lines, build nothing')
    args = parser.parse_args(argv)
    if args.print_cuda_env:
        return print_cuda_env()
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
