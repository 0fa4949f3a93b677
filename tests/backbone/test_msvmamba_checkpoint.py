"""Loading MSVMamba checkpoints: official training files (yacs config, optimizer state,
'model' / 'model_ema') read without yacs and without running pickled code, mmengine files
with a prefix, key reports, shape errors, every init_cfg path and the converter CLI."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from backbone_utils import REPO, SMALL_MASTER

from projects.msvmamba import MSVMamba, load_checkpoint_file, load_pretrained
from projects.msvmamba.checkpoint import PickledObjectStub, extract_state_dict

CONVERTER = REPO / 'tools/model_converters/msvmamba2mmpretrain.py'

# A stand-in for yacs.config.CfgNode with the real one's pickled shape: a dict subclass
# whose __dict__ holds bookkeeping state (yacs itself is not installed in CI).
FAKE_YACS = textwrap.dedent('''
    class CfgNode(dict):
        def __init__(self, init_dict=None, new_allowed=False):
            super().__init__(init_dict or {})
            self.__dict__['__immutable__'] = False
            self.__dict__['__deprecated_keys__'] = set()
            self.__dict__['__renamed_keys__'] = {}
            self.__dict__['__new_allowed__'] = new_allowed

        def __getattr__(self, name):
            if name in self:
                return self[name]
            raise AttributeError(name)
''')


def official_state_dict(seed: int) -> dict:
    """Classification weights in the official layout (a small master model)."""
    torch.manual_seed(seed)
    model = MSVMamba(SMALL_MASTER)
    state_dict = {k.replace('final_norm.', 'classifier.norm.'): v
                  for k, v in model.state_dict().items()}
    state_dict['classifier.head.weight'] = torch.randn(10, 128)
    state_dict['classifier.head.bias'] = torch.randn(10)
    return state_dict


@pytest.fixture(scope='module')
def official_file(tmp_path_factory):
    """An upstream-style training checkpoint: 'model' and 'model_ema' weights, optimizer
    state, numpy scalars and a yacs CfgNode, saved while a fake yacs was importable."""
    root = tmp_path_factory.mktemp('official')
    (root / 'yacs').mkdir()
    (root / 'yacs' / '__init__.py').write_text('')
    (root / 'yacs' / 'config.py').write_text(FAKE_YACS)
    sys.path.insert(0, str(root))
    try:
        from yacs.config import CfgNode
        config = CfgNode({'MODEL': CfgNode({'TYPE': 'vssm', 'DROP_PATH_RATE': 0.2}),
                          'TRAIN': CfgNode({'EPOCHS': 300})})
        model, ema = official_state_dict(0), official_state_dict(1)
        ckpt = {'model': model, 'model_ema': ema, 'config': config, 'epoch': 299,
                'optimizer': {'state': {0: {'exp_avg': torch.zeros(3)}},
                              'param_groups': [{'lr': 1e-3}]},
                'max_accuracy': np.float64(77.3), 'max_accuray_ema': np.float64(77.5),
                'lr_scheduler': {'t_initial': 280}, 'scaler': {'scale': 65536.0}}
        path = root / 'ckpt_epoch_299.pth'
        torch.save(ckpt, path)
    finally:
        sys.path.remove(str(root))
        for name in [n for n in sys.modules if n == 'yacs' or n.startswith('yacs.')]:
            del sys.modules[name]
    return path, model, ema


def assert_loaded(module, state_dict, prefix=''):
    own = module.state_dict()
    for k, v in state_dict.items():
        if k.startswith(prefix) and k[len(prefix):] in own:
            torch.testing.assert_close(own[k[len(prefix):]], v, msg=k)


def test_official_checkpoint_loads_without_yacs(official_file):
    path, model, _ = official_file
    with pytest.raises(Exception):  # what torch >= 2.6 does by default
        torch.load(path)
    ckpt, stubbed = load_checkpoint_file(str(path))
    assert 'yacs.config.CfgNode' in stubbed
    config = ckpt['config']
    assert isinstance(config, PickledObjectStub) and config['MODEL']['DROP_PATH_RATE'] == 0.2
    state_dict, where = extract_state_dict(ckpt)
    assert where == "official checkpoint, 'model' weights"
    assert state_dict.keys() == model.keys()


def test_pickled_code_is_not_run(tmp_path):
    marker = tmp_path / 'pwned'

    class Payload:

        def __reduce__(self):  # unpickling would call open(marker, 'w')
            return open, (str(marker), 'w')

    path = tmp_path / 'evil.pth'
    torch.save({'model': {'w': torch.ones(2)}, 'payload': Payload()}, path)
    ckpt, stubbed = load_checkpoint_file(str(path))
    assert not marker.exists() and isinstance(ckpt['payload'], PickledObjectStub)
    assert any(name.endswith('.open') for name in stubbed)
    torch.testing.assert_close(ckpt['model']['w'], torch.ones(2))


@pytest.mark.parametrize('use_ema', [False, True])
def test_init_cfg_official_checkpoint(official_file, use_ema):
    path, model_sd, ema_sd = official_file
    backbone = MSVMamba(SMALL_MASTER, init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                                    use_ema=use_ema))
    backbone.init_weights()
    expected = ema_sd if use_ema else model_sd
    assert_loaded(backbone, expected)
    # classifier.norm goes into the classification norm
    torch.testing.assert_close(backbone.final_norm.weight, expected['classifier.norm.weight'])


def test_dense_backbone_reports_missing_and_unexpected(official_file):
    path, model_sd, _ = official_file
    backbone = MSVMamba(SMALL_MASTER, out_indices=(0, 1, 2, 3), final_norm=False)
    report = load_pretrained(backbone, str(path))
    assert sorted(report.missing) == sorted(f'outnorm{i}.{p}' for i in range(4)
                                            for p in ('weight', 'bias'))
    assert sorted(report.unexpected) == sorted(k for k in model_sd if 'classifier' in k)
    assert 'outnorm*.weight (x4)' in report.message
    assert 'classifier.norm.weight' in report.message
    assert_loaded(backbone, model_sd)


def test_init_cfg_mmengine_checkpoint_with_prefix(tmp_path):
    source = MSVMamba(SMALL_MASTER)
    whole_model = {'backbone.' + k: v for k, v in source.state_dict().items()}
    whole_model['head.fc.weight'] = torch.randn(10, 128)
    path = tmp_path / 'epoch_1.pth'
    torch.save({'meta': {'epoch': 1}, 'state_dict': whole_model}, path)
    target = MSVMamba(SMALL_MASTER, init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                                  prefix='backbone.'))
    target.init_weights()
    assert_loaded(target, whole_model, prefix='backbone.')

    wrong = MSVMamba(SMALL_MASTER, init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                                 prefix='model.'))
    with pytest.raises(KeyError, match="prefix 'model.'"):
        wrong.init_weights()


def test_init_cfg_none_keeps_construction_init():
    model = MSVMamba(SMALL_MASTER)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.init_weights()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_shape_mismatch_names_key_and_shapes(official_file):
    path, _, _ = official_file
    wider = MSVMamba(dict(SMALL_MASTER, dims=24))
    with pytest.raises(RuntimeError,
                       match=r'patch_embed\.0\.weight: checkpoint \(16, 3, 4, 4\) vs model '
                       r'\(24, 3, 4, 4\)'):
        load_pretrained(wider, str(path))


def test_missing_weights_choice_is_explained(tmp_path):
    path = tmp_path / 'no_ema.pth'
    torch.save({'model': {'w': torch.ones(1)}}, path)
    with pytest.raises(KeyError, match="without 'model_ema' weights.*use_ema=False"):
        load_pretrained(MSVMamba(SMALL_MASTER), str(path), use_ema=True)


def test_converter_cli(official_file, tmp_path, ema=False):
    # (--ema is run by test_msvmamba_compat's mmpretrain test)
    path, model_sd, ema_sd = official_file
    out = tmp_path / 'mmpretrain.pth'
    subprocess.run([sys.executable, str(CONVERTER), str(path), str(out)] +
                   (['--ema'] if ema else []), check=True, capture_output=True)
    converted = torch.load(out, weights_only=True)  # plain tensors and strings only
    assert converted['meta']['weights'] == ('model_ema' if ema else 'model')
    state_dict = converted['state_dict']
    source = ema_sd if ema else model_sd
    torch.testing.assert_close(state_dict['head.fc.weight'], source['classifier.head.weight'])
    torch.testing.assert_close(state_dict['backbone.final_norm.bias'],
                               source['classifier.norm.bias'])
    backbone_keys = {k[len('backbone.'):] for k in state_dict if k.startswith('backbone.')}
    assert backbone_keys == set(MSVMamba(SMALL_MASTER).state_dict())
    assert len(state_dict) == len(source)


def test_pretrained_backbone_inside_mmpretrain_classifier(official_file):
    """mmengine's init_weights of the whole model reaches the backbone's Pretrained init
    after the model-level initialisers (which must not overwrite the loaded weights)."""
    pytest.importorskip('mmpretrain')
    from mmpretrain.registry import MODELS
    path, _, ema_sd = official_file
    model = MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='MSVMamba', arch=SMALL_MASTER,
                      init_cfg=dict(type='Pretrained', checkpoint=str(path), use_ema=True)),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=10, in_channels=128),
        init_cfg=[dict(type='TruncNormal', layer='Linear', std=.02),
                  dict(type='Constant', layer='LayerNorm', val=1., bias=0.)]))
    model.init_weights()
    assert_loaded(model.backbone, ema_sd)
    torch.testing.assert_close(model.backbone.final_norm.weight,
                               ema_sd['classifier.norm.weight'])
