"""The GPU proof, correctness part (marked ``gpu``; skipped without a CUDA GPU):

* every GPU backend of the selective scan ('cuda', 'triton') against the float64 oracle of
  ``msvmamba_ops.testing``, forward and backward, on every case of ``GPU_CASES`` (up to the
  detection-scale L = 67,000), each tensor within the backend's bound of ``TOLERANCES``;
* the MSVMamba backbone on the GPU with each backend, forward and backward, against the
  same weights on the CPU (float32), and finite and close under bf16 autocast.

``python tools/analysis_tools/gpu_check.py`` runs these (``pytest -m gpu``) and the GPU
timings in one call. On a GPU, cases take 1-10 s each (the long-L oracles are a Python
loop on the CPU); without one, collecting and skipping them takes well under a second.
"""
import pytest
import torch

from msvmamba_ops import testing
from msvmamba_ops.scan import backend_module, backend_unavailable_reason

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')]

GPU_BACKENDS = ('cuda', 'triton')
CASES = {f'{c.name} {c.dtype}': c for c in testing.GPU_CASES}


def gpu_backend(name: str, dtype: torch.dtype = torch.float32):
    """The backend's module; skips the test when it cannot run on this GPU (e.g. the CUDA
    extension without nvcc, triton not installed), building its extension if needed."""
    reason = backend_unavailable_reason(name, 'cuda', dtype, build=True)
    if reason is not None:
        pytest.skip(f'backend {name!r} unavailable on this GPU: {reason}')
    return backend_module(name)


@pytest.mark.parametrize('backend', GPU_BACKENDS)
@pytest.mark.parametrize('case', list(CASES))
def test_backend_matches_float64_oracle(backend, case):
    case = CASES[case]
    module = gpu_backend(backend, testing.DTYPES[case.dtype])
    args, dout = case.inputs(device='cuda', seed=1)
    errors = testing.check_backend(module, case, args, dout,
                                   testing.oracle(args, case.softplus, dout))
    assert testing.passes(backend, case, errors), errors


@pytest.fixture(scope='module')
def small_backbone():
    """A small MSVMamba (every module of the master architecture) and a CPU batch."""
    from backbone_utils import SMALL_MASTER
    from projects.msvmamba import MSVMamba
    torch.manual_seed(0)
    model = MSVMamba(SMALL_MASTER, out_indices=(0, 1, 2, 3), final_norm=False)
    return model, torch.randn(2, 3, 64, 80)


def _forward_backward(model, x, backend):
    """Outputs, input gradient and weight gradients of a training-mode forward."""
    from projects.msvmamba_mm.speed import scan_backend
    x = x.clone().requires_grad_()
    model.zero_grad(set_to_none=True)
    with scan_backend(backend):
        outs = model.train()(x)
    sum((o * o).mean() for o in outs).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return [o.detach() for o in outs], x.grad, grads


@pytest.mark.parametrize('backend', GPU_BACKENDS)
def test_backbone_on_gpu_matches_cpu(backend, small_backbone, monkeypatch):
    gpu_backend(backend)
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)  # float32 convs
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    model, x = small_backbone
    want = _forward_backward(model, x, 'cpu' if backend_unavailable_reason(
        'cpu', 'cpu') is None else 'reference')
    got = _forward_backward(model.cuda(), x.cuda(), backend)
    model.cpu()
    for name, a, b in [*[(f'out{i}', a, b) for i, (a, b) in enumerate(zip(got[0], want[0]))],
                       ('dx', got[1], want[1]),
                       *[(f'd{n}', got[2][n], want[2][n]) for n in want[2]]]:
        testing.assert_close(a, b, 1e-3, name)  # float32 through every layer, both ways


@pytest.mark.parametrize('backend', GPU_BACKENDS)
def test_backbone_bf16_autocast_on_gpu(backend, small_backbone):
    gpu_backend(backend, torch.bfloat16)
    from projects.msvmamba_mm.speed import scan_backend
    model, x = small_backbone
    model, x = model.cuda().eval(), x.cuda()
    try:
        with torch.no_grad(), scan_backend(backend):
            reference = model(x)
            with torch.autocast('cuda', dtype=torch.bfloat16):
                outs = model(x)
    finally:
        model.cpu()
    for out, ref in zip(outs, reference):
        assert torch.isfinite(out).all()
        assert ((out.float() - ref).norm() / ref.norm()).item() < 0.05
