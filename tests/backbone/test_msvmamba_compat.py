"""Checkpoint compatibility with upstream MSVMamba (both branches): state-dict layout and
parameter counts against the official manifests, and outputs reproduced from the reference
vectors computed by the upstream code (fp32, eval)."""
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from backbone_utils import REPO, load_manifest, load_vectors, rel_error

from msvmamba_ops import cpu_fused
from projects.msvmamba import MSVMamba, convert_to_mmpretrain

MANIFESTS = {
    'nano': 'keys_msvmamba_nano',
    'micro': 'keys_msvmamba_micro',
    'tiny': 'keys_msvmamba_tiny',
    'v3_tiny': 'keys_msvmambav3_tiny',
    'v3_small': 'keys_msvmambav3_small',
    'v3_base': 'keys_msvmambav3_base',
}
EXPECTED_PARAMS = {  # classification models including the 1000-class head
    'nano': 6_864_136, 'micro': 11_879_272, 'tiny': 33_046_312,
    'v3_tiny': 32_263_720, 'v3_small': 50_216_296, 'v3_base': 90_591_976,
}
TOLERANCE = 1e-5
CONVERTER = REPO / 'tools/model_converters/msvmamba2mmpretrain.py'


@pytest.fixture(params=['fused', 'unfused'])
def token_mixer_path(request, monkeypatch):
    """Runs a test with the fused CPU inference pass of the token mixer (msvmamba_ops.
    cpu_fused, what eval on CPU uses) and with the unfused ops (what training uses)."""
    fused = request.param == 'fused'
    monkeypatch.setenv(cpu_fused.ENV_FUSED, '1' if fused else '0')
    if fused and not cpu_fused.is_available():
        pytest.skip('the cpu extension (fused pass) is not built')
    calls = []
    op = cpu_fused.ms2d_branch
    monkeypatch.setattr(cpu_fused, 'ms2d_branch', lambda *a, **k: calls.append(1) or op(*a, **k))
    yield request.param
    assert bool(calls) == fused, 'the token mixer did not take the path under test'


def shapes(module) -> dict:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize('arch', list(MANIFESTS))
def test_classification_layout_matches_manifest(arch):
    manifest = load_manifest(MANIFESTS[arch])
    with torch.device('meta'):  # layout only: no memory, no init cost
        model = MSVMamba(arch)
    reference = dict(manifest['state_dict'])
    head = {k: s for k, s in reference.items() if k.startswith('classifier.head.')}
    # Backbone = official keys minus classifier.*, with classifier.norm as final_norm.
    expected = {k.replace('classifier.norm.', 'final_norm.'): s
                for k, s in reference.items() if k not in head}
    assert shapes(model) == expected
    num_params = sum(p.numel() for p in model.parameters())
    num_params += sum(torch.Size(s).numel() for s in head.values())
    assert num_params == manifest['params'] == EXPECTED_PARAMS[arch]


def test_dense_layout_matches_manifest():
    manifest = load_manifest('keys_msvmamba_tiny_dense_backbone')
    with torch.device('meta'):
        model = MSVMamba('tiny', out_indices=(0, 1, 2, 3), final_norm=False)
    assert list(shapes(model).items()) == [(k, s) for k, s in manifest['state_dict']]
    assert sum(p.numel() for p in model.parameters()) == manifest['params']


@pytest.fixture(scope='module')
def master_vectors():
    return load_vectors('vectors_msvmamba_master_small')


@pytest.fixture(scope='module')
def v3_vectors():
    return load_vectors('vectors_msvmambav3_small')


def small_arch(vectors: dict, base: str) -> dict:
    return dict(base=base, dims=vectors['arch']['dims'], depths=vectors['arch']['depths'])


def test_master_dense_outputs_reproduce_upstream(master_vectors, token_mixer_path):
    model = MSVMamba(small_arch(master_vectors, 'tiny'), out_indices=(0, 1, 2, 3),
                     final_norm=False).eval()
    model.load_state_dict(master_vectors['backbone_state_dict'])  # strict
    with torch.no_grad():
        for x, expected in zip(master_vectors['inputs'], master_vectors['backbone_outputs']):
            outs = model(x)
            assert [o.shape for o in outs] == [e.shape for e in expected]
            for i, (out, ref) in enumerate(zip(outs, expected)):
                err = rel_error(out, ref)
                assert err <= TOLERANCE, f'input {tuple(x.shape)} stage {i}: {err:.2e}'


def classification_logits(arch: dict, official_state_dict: dict, inputs) -> list:
    """Logits of backbone (classification mode) + average pool + linear head, with the
    weights going through the mmpretrain key conversion."""
    converted = convert_to_mmpretrain(official_state_dict)
    backbone = MSVMamba(arch).eval()
    backbone.load_state_dict({k[len('backbone.'):]: v for k, v in converted.items()
                              if k.startswith('backbone.')})
    with torch.no_grad():
        return [F.linear(backbone(x)[0].mean((2, 3)), converted['head.fc.weight'],
                         converted['head.fc.bias']) for x in inputs]


def v3_case(v3_vectors, variant):
    data = v3_vectors['variants'][variant]
    # 'vms' (z gate) is the v3 Base setting, 'vms_noz' the Tiny/Small one.
    base = 'v3_base' if variant == 'vms' else 'v3_tiny'
    return small_arch(v3_vectors, base), data['state_dict'], data['inputs'], data['logits']


@pytest.mark.parametrize('case', ['master', 'v3_vms_noz', 'v3_vms'])
def test_logits_reproduce_upstream(case, master_vectors, v3_vectors, token_mixer_path):
    if case == 'master':
        v = master_vectors
        arch, state_dict, inputs, expected = (small_arch(v, 'tiny'), v['classifier_state_dict'],
                                              v['inputs'], v['logits'])
    else:
        arch, state_dict, inputs, expected = v3_case(v3_vectors, case[len('v3_'):])
    assert any(x.shape[-2:] == (70, 90) for x in inputs)  # the odd-size case is covered
    for x, logits, ref in zip(inputs, classification_logits(arch, state_dict, inputs),
                              expected):
        err = rel_error(logits, ref)
        assert err <= TOLERANCE, f'{case} input {tuple(x.shape)}: {err:.2e}'


def test_converter_and_mmpretrain_classifier_reproduce_logits(v3_vectors, tmp_path):
    """Official-format file -> converter CLI -> mmpretrain ImageClassifier -> logits."""
    pytest.importorskip('mmpretrain')
    from mmengine.runner import load_checkpoint
    from mmpretrain.registry import MODELS

    arch, state_dict, inputs, expected = v3_case(v3_vectors, 'vms')
    official = tmp_path / 'official.pth'
    torch.save({'model': state_dict, 'model_ema': state_dict, 'epoch': 3}, official)
    converted = tmp_path / 'mmpretrain.pth'
    # in-process (test_msvmamba_checkpoint runs the command line)
    spec = importlib.util.spec_from_file_location('converter', CONVERTER)
    converter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(converter)
    assert converter.main([str(official), str(converted), '--ema']) == 0

    model = MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='MSVMamba', arch=arch),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=10, in_channels=arch['dims'][-1]))).eval()
    load_checkpoint(model, str(converted), strict=True)
    with torch.no_grad():
        for x, ref in zip(inputs, expected):
            assert rel_error(model(x, mode='tensor'), ref) <= TOLERANCE
