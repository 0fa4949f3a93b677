"""The fused CPU inference ops of msvmamba_ops.cpu_fused (msvmamba_cpu::ms2d_branch,
msvmamba_cpu::convffn_dwconv_gelu) and the fast-path eligibility check. The backbone's
modules on them, against their plain forward: tests/backbone/test_fast_path.py."""
import pytest
import torch
import torch.nn.functional as F

from msvmamba_ops import cpu_fused

pytestmark = pytest.mark.skipif(not cpu_fused.is_available(),
                                reason='the cpu extension (fused pass) is not built')


def assert_close(actual, expected, rtol=2e-5):
    err = ((actual - expected).abs().max() / expected.abs().max()).item()
    assert err <= rtol, f'relative error {err:.2e}'


def test_why_not_fast_path_names_each_condition(monkeypatch):
    """The check reads only nn.Module state, so any module shows each reason."""
    module, x = torch.nn.Linear(16, 16).eval(), torch.randn(2, 16)
    with torch.no_grad():
        assert cpu_fused.why_not_fast_path(module, x) is None
        assert cpu_fused.fast_path_eligible(module, x)
        assert 'does not cover' in cpu_fused.why_not_fast_path(module, x, supported=False)
        assert 'float64' in cpu_fused.why_not_fast_path(module, x.double())
        with torch.autocast('cpu', dtype=torch.float16):  # bf16: tests/backbone/test_fast_path
            assert 'CPU autocast in torch.float16' in cpu_fused.why_not_fast_path(module, x)
        assert cpu_fused.why_not_fast_path(module.train(), x) == 'training mode'
        module.eval()
        monkeypatch.setenv(cpu_fused.ENV_FUSED, '0')
        assert cpu_fused.why_not_fast_path(module, x) == f'{cpu_fused.ENV_FUSED}=0'
    monkeypatch.delenv(cpu_fused.ENV_FUSED)
    assert 'autograd' in cpu_fused.why_not_fast_path(module, x)  # weights need gradients


def test_forced_scan_backend_disables_the_fused_pass(monkeypatch):
    """MSVMAMBA_SCAN_BACKEND=reference asks for the reference scan: the fused pass (which
    has its own scan) steps aside."""
    monkeypatch.setenv('MSVMAMBA_SCAN_BACKEND', 'reference')
    assert not cpu_fused.is_available()
    monkeypatch.setenv('MSVMAMBA_SCAN_BACKEND', 'cpu')
    assert cpu_fused.is_available()


def branch_inputs(E=16, R=2, N=1):
    """A 3x4 map through a 1x1 conv: scan step s reads map position s."""
    return dict(x=torch.randn(2, 3, 4, E), conv_weight=torch.randn(E, 1, 1, 1),
                conv_bias=torch.randn(E), stride=1, padding=0, order=None,
                x_proj_weight=torch.randn(R + 2 * N, E), dt_proj_weight=torch.randn(E, R),
                dt_bias=torch.randn(E), A=-torch.rand(E, N), D=torch.randn(E), norm=None,
                eps=1e-5)


def test_nan_input_propagates():
    """A NaN reaches its own step and, through the state, every later one; nothing before
    it and nothing in other images."""
    args = branch_inputs()
    args['x'][1, 1, 1, 3] = float('nan')  # map position 5
    out, _ = cpu_fused.ms2d_branch(**args)
    assert torch.isfinite(out[0]).all()
    assert out[1, 5:].isnan().all() and torch.isfinite(out[1, :5]).all()


def test_branch_op_errors_name_the_problem():
    args = branch_inputs()
    with pytest.raises(RuntimeError, match='is smaller than the 7x7 conv with padding 0'):
        cpu_fused.ms2d_branch(**dict(args, conv_weight=torch.randn(16, 1, 7, 7)))
    with pytest.raises(RuntimeError, match='conv_weight must be a depthwise'):
        cpu_fused.ms2d_branch(**dict(args, conv_weight=torch.randn(16, 2, 1, 1)))
    with pytest.raises(RuntimeError, match='order must hold K permutations'):
        cpu_fused.ms2d_branch(**dict(args, order=torch.zeros(24, dtype=torch.long)))
    with pytest.raises(RuntimeError, match='epilogue .* needs one scan direction'):
        cpu_fused.ms2d_branch(**dict(args, order=torch.arange(12).repeat(2), pool=True))
    with pytest.raises(RuntimeError, match='epilogue .* needs low'):  # else ignored
        cpu_fused.ms2d_branch(**dict(args, pool=True))
    with pytest.raises(RuntimeError, match='z must be a contiguous float32 or bfloat16 CPU tensor'):
        cpu_fused.ms2d_branch(**dict(args, z=torch.zeros(2, 12, 16, dtype=torch.float16)))
    with pytest.raises(RuntimeError, match='x must be a contiguous float32 or bfloat16 CPU tensor'):
        cpu_fused.ms2d_branch(**dict(args, x=args['x'].double()))
    with pytest.raises(RuntimeError, match='D must have shape'):
        cpu_fused.ms2d_branch(**dict(args, D=torch.randn(15)))


def test_convffn_op_takes_any_odd_kernel():
    """A 5x5 kernel and an input bias against torch's conv and GELU."""
    torch.manual_seed(0)
    h, w5, b5 = torch.randn(1, 6, 7, 24), torch.randn(24, 1, 5, 5), torch.randn(24)
    bias = torch.randn(24)
    t = (h + bias).permute(0, 3, 1, 2)
    expected = F.gelu(t + F.conv2d(t, w5, b5, padding=2, groups=24)).permute(0, 2, 3, 1)
    assert_close(cpu_fused.convffn_dwconv_gelu(h, bias, w5, b5), expected)


def test_convffn_gelu_matches_torch_over_its_range():
    """The op's erf-based GELU (1x1 zero kernel: GELU(h)) against torch's, tails included;
    NaN propagates."""
    h = torch.linspace(-12, 12, 4801).view(1, 1, -1, 1).expand(1, 1, -1, 16).contiguous()
    out = cpu_fused.convffn_dwconv_gelu(h, None, torch.zeros(16, 1, 1, 1), None)
    assert (out - F.gelu(h)).abs().max() < 2e-6
    nan = cpu_fused.convffn_dwconv_gelu(torch.full((1, 1, 1, 16), float('nan')), None,
                                        torch.zeros(16, 1, 1, 1), None)
    assert nan.isnan().all()


# ------------------------------------------------------------------ bf16 in and out (#22)

def test_convffn_op_bf16_in_and_out():
    """A bf16 h (linear1 under bf16 autocast) gives a bf16 map: the float32 op's result on
    the same values rounded to nearest even, exactly; NaN stays NaN. 40 channels: two
    16-lane vectors and a tail."""
    torch.manual_seed(0)
    h = torch.randn(2, 5, 7, 40).bfloat16()
    h[0, 2, 3, 5] = float('nan')
    weights = (torch.randn(40), torch.randn(40, 1, 3, 3), torch.randn(40))
    got = cpu_fused.convffn_dwconv_gelu(h, *weights)
    want = cpu_fused.convffn_dwconv_gelu(h.float(), *weights).bfloat16()
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


def test_branch_op_bf16_gate_and_output():
    """The full-resolution epilogue reads a bf16 gate z as its float32 values, and with
    bf16_out returns the float32 output rounded to bf16, exactly (the pooled sums stay
    float32). 40 channels: a tail after two vectors."""
    torch.manual_seed(0)
    args = dict(branch_inputs(E=40), low=torch.randn(2, 2, 2, 40), pool=True)
    z = torch.randn(2, 12, 40).bfloat16()
    want, want_pool = cpu_fused.ms2d_branch(**args, z=z.float())
    assert torch.equal(cpu_fused.ms2d_branch(**args, z=z)[0], want)
    got, got_pool = cpu_fused.ms2d_branch(**args, z=z, bf16_out=True)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want.bfloat16())
    assert torch.equal(got_pool, want_pool)
    with pytest.raises(RuntimeError, match='bf16_out needs the full-resolution epilogue'):
        cpu_fused.ms2d_branch(**branch_inputs(), bf16_out=True)


def test_bf16_weight_is_kept_until_the_weight_changes():
    """The fast path's bf16 copies of its weights under autocast: the cast's values, the
    same tensor while the weight is unchanged, a new one after each kind of update (each
    check alone sees its kind: the values stay the same where the version or the storage
    moves)."""
    w = torch.nn.Linear(40, 30).weight
    kept = cpu_fused.bf16_weight(w)
    assert kept.dtype == torch.bfloat16 and torch.equal(kept, w.detach().bfloat16())
    assert cpu_fused.bf16_weight(w) is kept
    rows = cpu_fused.bf16_weight(w, (10, 30))
    assert torch.equal(rows, w.detach()[10:30].bfloat16()) and rows.is_contiguous()
    updates = (lambda: w.mul_(1.0),                                 # version counter only
               lambda: setattr(w, 'data', w.data.clone()),          # storage only
               lambda: w.data.copy_(w.data + 1e-7 * torch.randn(30, 40)),  # .data: values
               lambda: w.add_(1.0))
    for update in updates:
        with torch.no_grad():
            update()
        again = cpu_fused.bf16_weight(w)
        assert again is not kept and torch.equal(again, w.detach().bfloat16())
        kept = again
        rows_again = cpu_fused.bf16_weight(w, (10, 30))
        assert rows_again is not rows and torch.equal(rows_again, w.detach()[10:30].bfloat16())
        rows = rows_again


def test_bf16_weight_of_inference_tensors():
    """A model made under inference_mode has inference-tensor weights, which have no
    version counter: still kept, and an ordinary tensor usable outside inference_mode."""
    with torch.inference_mode():
        w = torch.nn.Linear(40, 30).weight
        kept = cpu_fused.bf16_weight(w)
        assert cpu_fused.bf16_weight(w) is kept and not kept.is_inference()
        w.add_(1.0)
        assert torch.equal(cpu_fused.bf16_weight(w), w.bfloat16())


def test_branch_op_bf16_input():
    """A bf16 x (the scan half of in_proj under bf16 autocast) is read as its float32
    values, exactly: through the whole-map conv of a two-direction branch and the per-tile
    conv of the full-resolution epilogue. A 3x3 conv over both images: every tap offset
    into the bf16 map, the second image's offset included."""
    torch.manual_seed(0)
    args = dict(branch_inputs(E=40), conv_weight=torch.randn(40, 1, 3, 3), padding=1)
    x = args['x'].bfloat16()
    two_directions = dict(order=torch.cat([torch.arange(12), torch.arange(12).flip(0)]))
    epilogue = dict(low=torch.randn(2, 2, 2, 40), z=torch.randn(2, 12, 40).bfloat16(),
                    pool=True, bf16_out=True)
    for extra in (two_directions, epilogue):
        got = cpu_fused.ms2d_branch(**dict(args, x=x, **extra))
        want = cpu_fused.ms2d_branch(**dict(args, x=x.float(), **extra))
        assert torch.equal(got[0], want[0])
        assert (got[1] is want[1] is None) or torch.equal(got[1], want[1])  # pooled


def layer_norm_weights(C=40):
    """(weight, bias) far enough from (1, 0) that using either wrongly shows."""
    return 1 + 0.1 * torch.randn(C), 0.1 * torch.randn(C)


@pytest.mark.parametrize('y_dtype', [torch.bfloat16, torch.float32])
def test_residual_layer_norm_matches_aten(y_dtype):
    """s = x + y exactly (a bf16 y widened first); n = LayerNorm(s) computed in float32
    and rounded once to bf16: ATen's float32 LayerNorm cast to bf16, bit for bit nearly
    everywhere (their float32 sums may round apart), within a relative bf16 step always;
    twice: the rows [n, n]. 21 rows of 40 channels: two tasks of 16 rows, two 16-lane
    vectors and a tail."""
    torch.manual_seed(0)
    x, y, norm = torch.randn(3, 7, 40), torch.randn(3, 7, 40).to(y_dtype), layer_norm_weights()
    s, n, n_twice = cpu_fused.residual_layer_norm(x, y, norm, 1e-5, twice=True)
    assert s.dtype == torch.float32 and torch.equal(s, x + y.float())
    want = F.layer_norm(x + y.float(), (40, ), *norm, eps=1e-5)
    assert n.dtype == torch.bfloat16 and n.shape == x.shape
    assert ((n.float() - want).abs() <= 2**-8 * want.abs() + 1e-6).all()
    assert (n == want.bfloat16()).float().mean() >= 0.99
    assert n_twice.dtype == torch.bfloat16 and n_twice.shape == (3, 7, 80)
    assert torch.equal(n_twice[..., :40], n) and torch.equal(n_twice[..., 40:], n)
    assert cpu_fused.residual_layer_norm(x, y, norm)[2] is None  # twice=False


def test_residual_layer_norm_without_y_or_norm():
    """Without y the stream is x itself (the op returns no copy) and n its norm (what a zero
    y gives); without norm only the add: no n, no [n, n]."""
    torch.manual_seed(0)
    x, y, norm = torch.randn(3, 7, 40), torch.randn(3, 7, 40).bfloat16(), layer_norm_weights()
    s, n, n_twice = cpu_fused.residual_layer_norm(x, None, norm, twice=True)
    _, n_zero_y, _ = cpu_fused.residual_layer_norm(x, torch.zeros_like(x), norm)
    assert s is x and torch.equal(n, n_zero_y) and torch.equal(n_twice[..., 40:], n)
    s, n, n_twice = cpu_fused.residual_layer_norm(x, y, None)
    assert torch.equal(s, x + y.float()) and n is None and n_twice is None


def test_residual_layer_norm_errors_name_the_problem():
    x, y, norm = torch.randn(3, 40), torch.randn(3, 40), layer_norm_weights()
    with pytest.raises(RuntimeError, match='x must be a contiguous float32 CPU tensor'):
        cpu_fused.residual_layer_norm(x.double(), None, norm)
    with pytest.raises(RuntimeError, match=r'y must be .* shaped as x \[3, 40\], got \[3, 39\]'):
        cpu_fused.residual_layer_norm(x, y[:, :39].contiguous(), norm)
    with pytest.raises(RuntimeError, match=r'weight and bias must be .* \(C,\) .* C = 40'):
        cpu_fused.residual_layer_norm(x, y, (norm[0][:39], norm[1]))
    with pytest.raises(RuntimeError, match=r'without weight and bias \(the add only\) y is '):
        cpu_fused.residual_layer_norm(x, None, None)
    with pytest.raises(RuntimeError, match='and twice is not'):
        cpu_fused.residual_layer_norm(x, y, None, twice=True)


def test_scale_channels_in_place():
    """y[b, p, e] *= scale[b, e] on a bf16 map, in place: the float32 product rounded once,
    exactly. 70 positions: three tasks of 32 per image, the last one partial."""
    torch.manual_seed(0)
    y, scale = torch.randn(2, 70, 40).bfloat16(), torch.randn(2, 40)
    want = (y.float() * scale[:, None, :]).bfloat16()
    assert cpu_fused.scale_channels_(y, scale) is y and torch.equal(y, want)
    with pytest.raises(RuntimeError, match=r'y must be a contiguous bfloat16 \(B, P, E\)'):
        cpu_fused.scale_channels_(y.float(), scale)
    with pytest.raises(RuntimeError, match=r'scale must be .* \(B, E\) CPU tensor, B, E = 2, 40'):
        cpu_fused.scale_channels_(y, scale[:, :39].contiguous())


def test_bf16_weight_split_into_high_and_low_parts():
    """split=True: rows [W_hi, W_lo] (rows, 2 * in), W_hi = W in bf16, W_lo = the rest in
    bf16: W_hi + W_lo is W to ~16 bits where W_hi alone is ~8. Kept apart from the plain
    bf16 copy of the same rows, and made again after an update."""
    w = torch.nn.Linear(40, 30).weight

    def parts(rows):
        high = rows.bfloat16()
        return high, (rows - high.float()).bfloat16()

    split = cpu_fused.bf16_weight(w, (0, 20), split=True)
    rows = w.detach()[:20]
    high, low = parts(rows)
    assert split.dtype == torch.bfloat16 and torch.equal(split, torch.cat([high, low], 1))
    assert ((high.float() + low.float() - rows).abs() <= 2**-16 * rows.abs()).all()
    assert ((high.float() - rows).abs() > 2**-12 * rows.abs()).any()  # what low adds
    assert torch.equal(cpu_fused.bf16_weight(w, (0, 20)), high)  # not the split copy
    assert cpu_fused.bf16_weight(w, (0, 20), split=True) is split
    with torch.no_grad():
        w.add_(1.0)
    again = cpu_fused.bf16_weight(w, (0, 20), split=True)
    assert again is not split and torch.equal(again, torch.cat(parts(w.detach()[:20]), 1))
