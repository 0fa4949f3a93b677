"""The whole backbone under torch.compile(fullgraph=True): no graph break in eval or in
training, and the same outputs (and input gradients) as eager.

The aot_eager backend runs dynamo, the fake implementations of the scan op and AOT
autograd without Inductor's (slow) C++ code generation. MSVMamba-Nano at 32x32, about 30 s
on a 2-core machine.
"""
import pytest
import torch

from projects.msvmamba import MSVMamba


@pytest.fixture(scope='module')
def nano():
    torch.manual_seed(0)
    # No stochastic depth: compiled and eager runs must draw nothing at random.
    return MSVMamba('nano', out_indices=(0, 1, 2, 3), final_norm=False, drop_path_rate=0.0)


def test_compile_fullgraph_eval_matches_eager(nano):
    """In eval on the CPU, eager takes the fused fast path; the compiled graph records the
    plain ops: both agree."""
    torch._dynamo.reset()
    model = nano.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        compiled = torch.compile(model, fullgraph=True, backend='aot_eager')(x)
        eager = model(x)
    assert len(compiled) == 4
    for c, e in zip(compiled, eager):
        torch.testing.assert_close(c, e)


def test_compile_fullgraph_train_matches_eager(nano):
    torch._dynamo.reset()
    model = nano.train()
    x = torch.randn(2, 3, 32, 32)
    results = []
    for fn in (torch.compile(model, fullgraph=True, backend='aot_eager'), model):
        xi = x.clone().requires_grad_()
        model.zero_grad(set_to_none=True)
        outs = fn(xi)
        sum((o * o).mean() for o in outs).backward()
        results.append((outs, xi.grad, model.layers[0].blocks[0].op.x_proj_weight.grad))
    (c_outs, c_gx, c_gw), (e_outs, e_gx, e_gw) = results
    for c, e in zip(c_outs, e_outs):
        torch.testing.assert_close(c, e)
    torch.testing.assert_close(c_gx, e_gx)
    torch.testing.assert_close(c_gw, e_gw)
