"""The Triton kernels of msvmamba_ops/triton_scan.py compiled for real GPU targets, no GPU
needed: Triton's own compiler and its bundled ptxas turn them into cubins for sm_80, 86, 89,
90, 100 and 120 (the interpreter, which tests/ops/test_triton_scan.py runs, accepts code the
compiler rejects). Compiled are the block configurations the dispatcher (triton_scan._config)
picks at MSVMamba-Tiny's scan shapes -- ImageNet 224x224 (batch 128 per GPU), Mask R-CNN at
1344x800 and UperNet at 512x512 (batch 2 per GPU) -- with the SM count of one GPU per target;
each cubin's registers and stack/local memory (where ptxas spills registers) come from
cuobjdump --dump-resource-usage, and any spill fails. The ~70 compiles run in two worker
processes (about 40 s of CPU). Compiled only: nothing here has run on a GPU.

    python tests/ops/test_triton_compile.py     # prints the register table
"""
import concurrent.futures
import functools
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict, List, Tuple

import pytest
import torch

triton = pytest.importorskip('triton')
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from msvmamba_ops import triton_scan  # noqa: E402

# compute capability -> (a GPU of it, its SM count): the SM count decides BLOCK_D
TARGETS = {80: ('A100', 108), 86: ('RTX 3090', 82), 89: ('L40S', 142), 90: ('H100 SXM', 132),
           100: ('B200', 148), 120: ('RTX 5090', 170)}
TINY_E = 192  # scan channels of MSVMamba-Tiny's first stage (doubling per stage)
# (task, images per GPU, padded input height, width)
WORKLOADS = [('ImageNet', 128, 224, 224), ('Mask R-CNN', 2, 800, 1344), ('UperNet', 2, 512, 512)]
KERNEL_ARGS = ('HAS_D', 'HAS_BIAS', 'SOFTPLUS')  # as MSVMamba calls the scan: all on
# No spill is allowed. ptxas for sm_100 used to spill 8 and 16 bytes in the backward kernel
# at BLOCK_D,N,L 8,1,64 and 1,1,1024, where it held 128 and 168 registers (the most for 4 and
# 3 blocks of 128 threads per SM) and spilled the rest; int32 in-block offsets and a backward
# that is done with the forward states before its adjoint scan removed those spills
# (msvmamba_ops/triton_scan.py).


def scan_shapes() -> List[Tuple[int, int, int]]:
    """(batch, channels, length) of every scan call of MSVMamba-Tiny in WORKLOADS: per stage
    (stride 4, 8, 16, 32) the full-resolution branch (h * w) and the low-resolution one
    (3 directions at half the resolution: 3 * ceil(h / 2) * ceil(w / 2))."""
    shapes = set()
    for _, batch, height, width in WORKLOADS:
        for stage in range(4):
            h, w = -(-height // (4 << stage)), -(-width // (4 << stage))
            dim = TINY_E << stage
            shapes.add((batch, dim, h * w))
            shapes.add((batch, dim, 3 * -(-h // 2) * -(-w // 2)))
    return sorted(shapes)


def dispatcher_configs(sm_count: int) -> Dict[str, set]:
    """{'fwd' | 'bwd': {(BLOCK_D, BLOCK_N, BLOCK_L, num_warps)}} that triton_scan._config
    picks for scan_shapes() on a GPU with ``sm_count`` SMs (nstate 1, one group)."""
    device = torch.device('cuda', 0)
    real = triton_scan._sm_count
    triton_scan._sm_count = lambda index: sm_count
    try:
        return {kind: {triton_scan._config(b, 1, e, 1, length, device, tile)
                       for b, e, length in scan_shapes()}
                for kind, tile in (('fwd', triton_scan._FWD_TILE),
                                   ('bwd', triton_scan._BWD_TILE))}
    finally:
        triton_scan._sm_count = real


def kernel_variants(sm_count: int) -> List[Tuple[str, dict, int, str]]:
    """(kernel name, constexprs, num_warps, pointer dtype) to compile for one target: the
    forward kernel (output) and the backward kernel at every config of theirs in fp32, and
    at the largest one also with bf16 tensors (AMP; fp16 compiles to the same registers);
    the forward kernel as the backward runs it (chunk states only) at the largest backward
    config."""
    configs = dispatcher_configs(sm_count)
    flags = {name: True for name in KERNEL_ARGS}
    out = []
    for kind, kernel, extra, every in (
            ('fwd', '_fwd_kernel', dict(STORE_OUT=True, STORE_STATES=False), True),
            ('bwd', '_fwd_kernel', dict(STORE_OUT=False, STORE_STATES=True), False),
            ('bwd', '_bwd_kernel', {}, True)):
        ordered = sorted(configs[kind], key=lambda c: (c[0] * c[1] * c[2], c[0]))
        for block_d, block_n, block_l, warps in (ordered if every else ordered[-1:]):
            consts = dict(flags, **extra, BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_L=block_l)
            out.append((kernel, consts, warps, 'fp32'))
        if every:
            out.append((kernel, out[-1][1], out[-1][2], 'bf16'))
    return out


def signature(fn, dtype: str) -> Dict[str, str]:
    """Triton signature of a scan kernel: u/delta/B/C/dout and their gradients in
    ``dtype``; A, D, bias, the states and partial sums fp32; sizes i32."""
    fp32_ptrs = {'A_ptr', 'D_ptr', 'bias_ptr', 'states_ptr', 'dAp_ptr', 'dDp_ptr',
                 'dbiasp_ptr', 'dBp_ptr', 'dCp_ptr'}
    sig = {}
    for param in fn.params:
        if param.is_constexpr:
            sig[param.name] = 'constexpr'
        elif param.name.endswith('_ptr'):
            sig[param.name] = '*fp32' if param.name in fp32_ptrs else f'*{dtype}'
        else:
            sig[param.name] = 'i32'
    return sig


def cuobjdump() -> str:
    """Triton's bundled cuobjdump (next to its ptxas)."""
    tool = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin',
                        'cuobjdump')
    if not os.path.exists(tool):
        pytest.skip(f'no cuobjdump bundled with triton {triton.__version__} at {tool}')
    return tool


def resource_usage(cubin: bytes) -> Dict[str, int]:
    """REG, STACK, SHARED, LOCAL of the kernel in ``cubin`` (cuobjdump --dump-resource-usage)."""
    with tempfile.NamedTemporaryFile(suffix='.cubin') as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([cuobjdump(), '--dump-resource-usage', f.name], check=True,
                              capture_output=True, text=True, timeout=60).stdout
    line = next(ln for ln in text.splitlines() if 'REG:' in ln)
    return {k: int(v) for k, v in re.findall(r'(REG|STACK|SHARED|LOCAL):(\d+)', line)}


def compile_one(job: Tuple[int, str, dict, int, str]) -> dict:
    """Compile one variant for compute capability ``cc``; its row of the register table."""
    cc, kernel, consts, warps, dtype = job
    fn = getattr(triton_scan, kernel)
    compiled = triton.compile(ASTSource(fn=fn, signature=signature(fn, dtype),
                                        constexprs=consts),
                              target=GPUTarget('cuda', cc, 32), options=dict(num_warps=warps))
    usage = resource_usage(compiled.asm['cubin'])
    variant = 'states' if consts.get('STORE_STATES') else kernel.strip('_')[:3]
    return dict(cc=cc, kernel=variant, dtype=dtype, warps=warps,
                block=(consts['BLOCK_D'], consts['BLOCK_N'], consts['BLOCK_L']), **usage)


@functools.lru_cache(maxsize=None)
def compile_all() -> Dict[int, List[dict]]:
    """{compute capability: rows} for every target, compiled by two worker processes."""
    jobs = [(cc, *variant) for cc in sorted(TARGETS)
            for variant in kernel_variants(TARGETS[cc][1])]
    cuobjdump()  # skips here rather than in a worker when there is none
    context = multiprocessing.get_context('fork')  # workers inherit the imported triton
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
        rows = list(pool.map(compile_one, jobs))
    return {cc: [r for r in rows if r['cc'] == cc] for cc in TARGETS}


def format_rows(rows: List[dict]) -> str:
    lines = ['| target | kernel | dtype | BLOCK_D,N,L | warps | registers | stack+local bytes |',
             '|---|---|---|---|---|---|---|']
    lines += [f"| sm_{r['cc']} | {r['kernel']} | {r['dtype']} | {','.join(map(str, r['block']))}"
              f" | {r['warps']} | {r['REG']} | {r['STACK'] + r['LOCAL']} |" for r in rows]
    return '\n'.join(lines)


def test_dispatcher_configs_cover_both_regimes():
    """Many rows (ImageNet batch 128): 8 channels per program; few rows at detection
    length: fewer channels, longer chunks -- both appear among the compiled configs."""
    configs = dispatcher_configs(132)
    assert {c[0] for c in configs['fwd']} >= {1, 8}
    assert all(c[1] == 1 and c[3] == 4 for kind in configs.values() for c in kind)
    assert max(c[0] * c[2] for c in configs['fwd']) == triton_scan._FWD_TILE


def test_dispatcher_refuses_blocks_beyond_int32_offsets():
    """The kernels address inside a block with int32 offsets: 8 channels of L elements (plus
    one chunk) must stay below 2**31, else a clear error rather than wrapped addresses."""
    cpu = torch.device('cpu')
    assert triton_scan._config(1, 1, 8, 1, 2 ** 28 - 128, cpu, triton_scan._BWD_TILE) == (
        8, 1, 64, 4)
    with pytest.raises(ValueError, match='too long for the triton selective scan'):
        triton_scan._config(1, 1, 8, 1, 2 ** 28, cpu, triton_scan._BWD_TILE)


@pytest.mark.parametrize('cc', sorted(TARGETS))
def test_kernels_compile_without_spills(cc):
    rows = compile_all()[cc]
    assert rows and all(r['REG'] > 0 for r in rows)
    print(f'\n{TARGETS[cc][0]} (sm_{cc}, {TARGETS[cc][1]} SMs):\n{format_rows(rows)}')
    spilled = [r for r in rows if r['LOCAL'] or r['STACK']]
    assert not spilled, f'register spills on sm_{cc}:\n{format_rows(spilled)}'


if __name__ == '__main__':
    for target, target_rows in compile_all().items():
        print(f'{TARGETS[target][0]} (sm_{target}, {TARGETS[target][1]} SMs)')
        print(format_rows(target_rows), flush=True)
    sys.exit(0)
