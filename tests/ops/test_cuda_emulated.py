"""The CUDA selective-scan kernels (msvmamba_ops/csrc/cuda/selective_scan.cu) run on the CPU.

The 'cuda_emulated' extension compiles the same kernel and binding sources with g++ against
an emulation of the few device primitives they use (csrc/cuda/scan_emulate.h: one std::thread
per CUDA thread, real barriers for __syncthreads and the warp shuffles, NaN-filled shared
memory). This checks the kernels' logic (team scans, chunk carries, multi-warp combines, the
reverse adjoint scan, the dB/dC/dA reductions, vector and scalar loads) where no GPU exists.
It says nothing about GPU-only matters (compilation for sm_XX, timing, memory model).

The emulation always plans the launch for one SM, which widens teams as for a long sequence on
few rows, so small shapes reach every team size (4 ... 256 threads). The extension is built by
`python -m msvmamba_ops.build` (tools/setup.sh), else here on first use (~1 min).
Oracle and tolerances: msvmamba_ops.testing (float64 reference; the 'cuda' bounds).
"""
import pytest
import torch

from msvmamba_ops.testing import (ARG_NAMES, GRAD_NAMES, TINY_STAGES, ScanCase as Case,
                                  check_backend, oracle, passes)

# (case, expected (team, rows per block, chunks) of the backward launch planned for 1 SM)
CASES = [
    (Case('team4 rows32', 1, 32, 1, 1, 20), (4, 32, 1)),
    (Case('team8 N3 G2 rows4', 2, 8, 2, 3, 50), (8, 4, 1)),
    (Case('odd channels per group', 2, 3, 1, 1, 50, with_bias=False), (32, 1, 1)),
    (Case('team64 rows4 two chunks', 1, 4, 1, 1, 700), (64, 4, 2)),
    (Case('team64 N4 two chunks', 1, 4, 1, 4, 700, softplus=False), (64, 4, 2)),
    (Case('team128 N4 G2', 1, 2, 2, 4, 1500), (128, 1, 2)),
    (Case('team256 three chunks', 1, 2, 1, 1, 5000), (256, 1, 3)),
    (Case('bf16 oflex N2 G3', 2, 6, 3, 2, 33, dtype='bf16', out_float=True, dout_float=True),
     (16, 2, 1)),
    (Case('bf16 team128 rows2', 2, 4, 1, 1, 1100, dtype='bf16'), (128, 2, 2)),
    (Case('fp16 no D no bias', 1, 2, 1, 1, 300, dtype='fp16', with_D=False, with_bias=False),
     (32, 2, 2)),
    (Case('fp16 N2 dout fp32', 1, 8, 1, 2, 90, dtype='fp16', dout_float=True), (16, 8, 1)),
    (Case('L=1', 3, 4, 1, 1, 1), (8, 4, 1)),
]


@pytest.fixture(scope='module')
def emu():
    """torch.ops.msvmamba_cuda_emulated: the backend interface (fwd, bwd) and config."""
    from msvmamba_ops import build
    return build.load_extension('cuda_emulated')


@pytest.mark.parametrize('case,plan', CASES, ids=[c.name for c, _ in CASES])
def test_emulated_kernels_match_reference(emu, case, plan):
    team, rows, _threads, _chunk, nchunks, _smem = emu.config(
        case.batch, case.dim, case.length, case.nstate, case.groups, 1, True)
    assert (team, rows, nchunks) == plan  # the case covers the launch shape it is named for
    args, dout = case.inputs(seed=3)
    errs = check_backend(emu, case, args, dout, oracle(args, case.softplus, dout))
    assert passes('cuda', case, errs), errs


def _misaligned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of t whose data starts one element past a 16-byte boundary."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    assert out.is_contiguous() and out.data_ptr() % 16 != 0
    return out


@pytest.mark.parametrize('dtype', ['fp32', 'bf16'])
def test_emulated_scalar_paths_and_large_softplus_input(emu, dtype):
    """Unaligned rows (scalar loads/stores) and delta + bias > 20 (softplus = identity)."""
    case = Case('unaligned', 2, 4, 1, 2, 83, dtype=dtype)
    args, dout = case.inputs(seed=5)
    args['delta'][:, :, ::7] = 25.0
    for key in ('u', 'delta', 'B', 'C'):
        args[key] = _misaligned(args[key])
    dout = _misaligned(dout)
    errs = check_backend(emu, case, args, dout, oracle(args, case.softplus, dout))
    assert passes('cuda', case, errs), errs


@pytest.mark.parametrize('where', ['u', 'delta'])
def test_emulated_nan_propagates_like_reference(emu, where):
    case = Case('nan', 1, 4, 1, 1, 700)  # two chunks: the NaN crosses a chunk carry
    args, dout = case.inputs(seed=7)
    args[where][0, 1, 300] = float('nan')
    ins = [args[k] for k in ARG_NAMES]
    out = emu.fwd(*ins, True, False)
    grads = emu.bwd(*ins, dout, True)
    y_ref, g_ref, _ = oracle(args, case.softplus, dout)
    assert torch.equal(out.isnan(), y_ref.isnan())
    for name, g, r in zip(GRAD_NAMES, grads, g_ref):
        assert torch.equal(g.isnan(), r.isnan()), name


def test_launch_plan_at_msvmamba_shapes(emu):
    """Plans on an H100 (132 SMs): warp-per-row at classification shapes, several rows per
    warp for short sequences, multi-warp teams for detection-scale L at small batch."""
    plan = {(dim, length): emu.config(128, dim, length, 1, 1, 132, True)[:2]
            for _, dim, l_full, l_low in TINY_STAGES for length in (l_full, l_low)}
    assert plan[(192, 3136)] == [32, 8]
    assert plan[(1536, 49)] == [8, 32]
    assert emu.config(2, 192, 67000, 1, 1, 132, True)[:2] == [256, 1]
    for _, _, threads, _, _, smem in (emu.config(b, 192, length, n, 1, 132, bwd)
                                      for b in (1, 128) for length in (1, 49, 67000)
                                      for n in (1, 16, 2048) for bwd in (False, True)):
        assert threads % 32 == 0 and threads <= 256 and smem <= 48 * 1024
