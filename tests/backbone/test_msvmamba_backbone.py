"""MSVMamba backbone behaviour: output shapes (incl. odd sizes), input and config errors,
frozen stages, gradient checkpointing, autocast, registries. Small architectures keep the
reference selective scan fast."""
import importlib
import math

import pytest
import torch
from backbone_utils import SMALL_MASTER, SMALL_V3, SMALL_V3_GATED

from projects.msvmamba import MSVMamba

DENSE = dict(out_indices=(0, 1, 2, 3), final_norm=False)


def expected_sizes(arch: dict, size):
    """Stage output sizes: master stem floors (H // 4), v3 stem and every downsample
    after it take ceil (stride-2 convs with padding 1 / zero-padded patch merging)."""
    if arch['base'].startswith('v3'):
        h, w = (math.ceil(math.ceil(s / 2) / 2) for s in size)
    else:
        h, w = (s // 4 for s in size)
    sizes = []
    for _ in range(4):
        sizes.append((h, w))
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return sizes


@pytest.mark.parametrize('arch', [SMALL_MASTER, SMALL_V3], ids=['master', 'v3'])
@pytest.mark.parametrize('size', [(224, 224), (511, 511), (112, 137), (70, 90), (33, 33)])
def test_dense_output_shapes(arch, size):
    model = MSVMamba(arch, **DENSE).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    dims = model.dims
    assert [tuple(o.shape) for o in outs] == [
        (1, c, h, w) for c, (h, w) in zip(dims, expected_sizes(arch, size))]
    assert all(o.is_contiguous() and torch.isfinite(o).all() for o in outs)


def test_classification_mode_returns_last_stage_through_final_norm():
    model = MSVMamba(SMALL_MASTER).eval()  # defaults: out_indices=(3,), final_norm=True
    assert not hasattr(model, 'outnorm3')
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 64, 64))
    assert len(outs) == 1 and outs[0].shape == (2, 128, 2, 2)
    # final_norm is a LayerNorm over channels: unit variance per token at init.
    tokens = outs[0].permute(0, 2, 3, 1).reshape(-1, 128)
    assert torch.allclose(tokens.mean(-1), torch.zeros(8), atol=1e-5)


def test_arch_settings_and_overrides():
    settings = MSVMamba.resolve_arch(dict(base='v3_small', dims=(8, 16, 24, 32)))
    assert settings['dims'] == [8, 16, 24, 32] and settings['depths'] == [2, 3, 20, 2]
    assert settings['ffn_norm'] == 'post' and settings['drop_path_rate'] == 0.4
    assert MSVMamba.resolve_arch('micro')['dims'] == [64, 128, 256, 512]
    model = MSVMamba(dict(SMALL_MASTER, depths=(1, 2, 1, 1)), drop_path_rate=0.3)
    rates = [b.drop_path.drop_prob for layer in model.layers for b in layer.blocks]
    assert rates == pytest.approx([0.0, 0.075, 0.15, 0.225, 0.3])
    gated = MSVMamba(SMALL_V3_GATED).layers[0].blocks[0].op
    assert gated.gate and gated.in_proj.weight.shape == (32, 16)  # 'vms': x and z halves


@pytest.mark.parametrize('kwargs, match', [
    (dict(arch='huge'), "unknown arch 'huge'"),
    (dict(arch=dict(base='tiny', width=3)), r"unknown arch settings \['width'\]"),
    (dict(arch=dict(base='tiny', depths=(1, 1))), 'need 4 entries'),
    (dict(arch=dict(base='tiny', ms_split=(2, 1))), 'ms_split'),
    (dict(arch=dict(base='tiny', upsample='bicubic')), 'upsample'),
    (dict(out_indices=(0, 1)), 'final_norm=True normalises the last stage'),
    (dict(out_indices=(4, )), 'out_indices entries'),
    (dict(frozen_stages=5), 'frozen_stages'),
])
def test_bad_config_is_explained(kwargs, match):
    kwargs.setdefault('arch', SMALL_MASTER)
    with pytest.raises(ValueError, match=match):
        MSVMamba(**kwargs)


@pytest.mark.parametrize('x, error, match', [
    (torch.randn(3, 64, 64), ValueError, r'4-D .* x\.unsqueeze\(0\)'),
    (torch.randn(1, 1, 64, 64), ValueError, r'3 input channels but got 1.*in_channels=1'),
    (torch.randn(1, 3, 3, 64), ValueError, r'smaller than the smallest size .* \(4x4\)'),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), TypeError, r'x\.float\(\)'),
])
def test_bad_input_is_explained(x, error, match):
    model = MSVMamba(SMALL_MASTER)
    with pytest.raises(error, match=match):
        model(x)


def test_v3_takes_tiny_inputs():
    model = MSVMamba(SMALL_V3, **DENSE).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 3, 5))
    assert [o.shape[2:] for o in outs] == [(1, 2), (1, 1), (1, 1), (1, 1)]


def test_frozen_stages_are_frozen_and_stay_in_eval():
    model = MSVMamba(SMALL_MASTER, frozen_stages=2, drop_path_rate=0.2, **DENSE)
    model.train()
    frozen = [model.patch_embed, model.layers[0], model.layers[1], model.outnorm0,
              model.outnorm1]
    trainable = [model.layers[2], model.layers[3], model.outnorm2, model.outnorm3]
    for m in frozen:
        assert not m.training and all(not p.requires_grad for p in m.parameters())
    for m in trainable:
        assert m.training and all(p.requires_grad for p in m.parameters())
    sum(o.sum() for o in model(torch.randn(1, 3, 32, 32))).backward()
    assert all(p.grad is None for m in frozen for p in m.parameters())
    assert all(p.grad is not None for p in model.layers[2].parameters())
    everything = MSVMamba(SMALL_MASTER, frozen_stages=4).train()
    assert not any(p.requires_grad for p in everything.parameters())


def test_gradient_checkpointing_gives_same_outputs_and_grads():
    models = [MSVMamba(SMALL_V3, with_cp=cp, drop_path_rate=0.1, **DENSE).train()
              for cp in (False, True)]
    models[1].load_state_dict(models[0].state_dict())
    x = torch.randn(2, 3, 32, 24)
    results = []
    for model in models:
        torch.manual_seed(1)  # same drop-path draws; checkpointing replays the RNG state
        inp = x.clone().requires_grad_()
        outs = model(inp)
        sum((o * o).mean() for o in outs).backward()
        results.append((outs, inp.grad, {n: p.grad for n, p in model.named_parameters()}))
    (outs0, xg0, g0), (outs1, xg1, g1) = results
    for a, b in zip(outs0, outs1):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(xg0, xg1)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g0[name], g1[name], msg=name)


@pytest.mark.parametrize('dtype, tolerance', [(torch.bfloat16, 0.05), (torch.float16, 0.01)])
@pytest.mark.parametrize('arch', [SMALL_MASTER, SMALL_V3_GATED], ids=['master', 'v3_vms'])
def test_cpu_autocast_is_finite_and_close_to_fp32(arch, dtype, tolerance):
    torch.manual_seed(0)
    model = MSVMamba(arch, **DENSE).eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast('cpu', dtype=dtype):
            outs = model(x)
    for out, ref in zip(outs, reference):
        assert torch.isfinite(out).all()
        assert ((out.float() - ref).norm() / ref.norm()).item() < tolerance


@pytest.mark.parametrize('package', ['mmpretrain', 'mmdet', 'mmseg'])
def test_registered_in_openmmlab_registries(package):
    pytest.importorskip(package)
    registry = importlib.import_module(f'{package}.registry')
    model = registry.MODELS.build(dict(type='MSVMamba', arch=SMALL_V3, **DENSE))
    assert isinstance(model, MSVMamba)


def test_training_after_inference_mode_with_same_sizes():
    """Scan-order indices cached during inference must still work for backward."""
    model = MSVMamba(SMALL_V3)
    x = torch.randn(1, 3, 40, 36)
    with torch.inference_mode():
        model.eval()(x)
    out = model.train()(x)[0]
    out.sum().backward()
    assert model.layers[0].blocks[0].op.conv2d_b1.weight.grad is not None
