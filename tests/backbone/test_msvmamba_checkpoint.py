"""Loading MSVMamba checkpoints: official training files (yacs config, optimizer state,
'model' / 'model_ema') read like torch.load(weights_only=True) without yacs; crafted
malicious or broken files refused with the file named and process state untouched; loud,
strict loading (nothing loaded, missing or unused keys) with the keys that exist in only one
mode of the backbone loading quietly; every init_cfg path and the converter CLI."""
import collections
import logging
import pickle
import struct
import subprocess
import sys
import textwrap
import types
import zipfile

import numpy as np
import pytest
import torch
from backbone_utils import CONVERTER, SMALL_MASTER, load_converter

from projects.msvmamba import MSVMamba, load_checkpoint_file, load_pretrained
from projects.msvmamba import checkpoint as checkpoint_module
from projects.msvmamba.checkpoint import CheckpointError, extract_state_dict

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
    # the fake yacs as modules in memory: pickle finds CfgNode under 'yacs.config'
    package, config_module = types.ModuleType('yacs'), types.ModuleType('yacs.config')
    exec(FAKE_YACS, config_module.__dict__)
    package.config = config_module
    sys.modules.update({'yacs': package, 'yacs.config': config_module})
    try:
        CfgNode = config_module.CfgNode
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
        for name in [n for n in sys.modules if n == 'yacs' or n.startswith('yacs.')]:
            del sys.modules[name]
    return path, model, ema


def assert_loaded(module, state_dict, prefix=''):
    own = module.state_dict()
    for k, v in state_dict.items():
        if k.startswith(prefix) and k[len(prefix):] in own:
            torch.testing.assert_close(own[k[len(prefix):]], v, msg=k)


def test_official_checkpoint_loads_without_yacs(official_file):
    path, model, ema = official_file
    with pytest.raises(Exception):  # what torch >= 2.6 does by default
        torch.load(path)
    allowlist = set(torch.serialization.get_safe_globals())
    ckpt = load_checkpoint_file(str(path))
    assert 'yacs' not in sys.modules
    config = ckpt['config']  # yacs CfgNodes come back as OrderedDicts of their items
    assert type(config) is collections.OrderedDict
    assert config['MODEL']['DROP_PATH_RATE'] == 0.2 and config['TRAIN']['EPOCHS'] == 300
    assert ckpt['max_accuracy'] == 77.3 and ckpt['epoch'] == 299
    torch.testing.assert_close(ckpt['optimizer']['state'][0]['exp_avg'], torch.zeros(3))
    assert ckpt['lr_scheduler'] == {'t_initial': 280}
    for key, expected in (('model', model), ('model_ema', ema)):
        state_dict, where = extract_state_dict(ckpt, use_ema=key == 'model_ema')
        assert where == f"official checkpoint, '{key}' weights"
        assert state_dict.keys() == expected.keys()
        torch.testing.assert_close(dict(state_dict), expected)
    # the extra globals were allowed for the call only
    assert set(torch.serialization.get_safe_globals()) == allowlist


def test_reading_keeps_what_others_allowed(official_file):
    """Leaving the loader's allowlist context must not drop globals the process allowed
    itself (projects.msvmamba_mm allows numpy dtypes for mmengine checkpoints)."""
    # Where projects.msvmamba_mm already allowed it, this test's own context must not add
    # it a second time: leaving the context would then remove it for the rest of the run.
    allowed_here = [] if np.dtype in torch.serialization.get_safe_globals() else [np.dtype]
    with torch.serialization.safe_globals(allowed_here):
        load_checkpoint_file(str(official_file[0]))
        assert np.dtype in torch.serialization.get_safe_globals()


# --------------------------------------------------------------------- crafted files
def _text(value: str) -> bytes:
    data = value.encode()
    return pickle.BINUNICODE + struct.pack('<I', len(data)) + data


def _global(full_name: str) -> bytes:
    module, name = full_name.rsplit('.', 1)
    return pickle.GLOBAL + f'{module}\n{name}\n'.encode()


def build_payload(target: str, attribute: str, value: str) -> bytes:
    """BUILD on a global itself with state (None, {attribute: value}): a stdlib
    unpickler runs setattr(target, attribute, value)."""
    return (pickle.PROTO + b'\x02' + _global(target) + pickle.NONE + pickle.EMPTY_DICT +
            _text(attribute) + _text(value) + pickle.SETITEM + pickle.TUPLE2 + pickle.BUILD +
            pickle.STOP)


def reduce_payload(function: str, argument: str) -> bytes:
    """REDUCE: a stdlib unpickler calls function(argument)."""
    return (pickle.PROTO + b'\x02' + _global(function) + _text(argument) + pickle.TUPLE1 +
            pickle.REDUCE + pickle.STOP)


def write_like_torch_save(path, payload: bytes, tmp_path):
    """A zip laid out like torch.save's (its records copied from a real one) whose
    data.pkl is ``payload``."""
    template = tmp_path / 'template.pth'
    torch.save({'w': torch.ones(2)}, template)
    with zipfile.ZipFile(template) as src, zipfile.ZipFile(path, 'w') as dst:
        for info in src.infolist():
            name = info.filename.split('/', 1)[1]
            data = payload if name == 'data.pkl' else src.read(info)
            dst.writestr(f'{path.stem}/{name}', data)
    return path


def run_with_stdlib_pickle(payload: bytes, report: str) -> str:
    """What a plain pickle.loads does with the payload, in a separate process: proves the
    crafted bytes are a live attack, which the loader must then refuse."""
    code = (f'import collections, pickle, sys; pickle.loads(sys.stdin.buffer.read()); '
            f'print({report})')
    return subprocess.run([sys.executable, '-c', code], input=payload, capture_output=True,
                          check=True).stdout.decode().strip()


COUNTER_METHOD = collections.Counter.__dict__['most_common']


def assert_refused(path, *fragments: str):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint_file(str(path))
    message = str(info.value)
    for fragment in (str(path), ) + fragments:
        assert fragment in message, message
    assert collections.Counter.__dict__['most_common'] is COUNTER_METHOD
    return message


def test_build_on_allowed_class_is_refused(tmp_path):
    payload = build_payload('collections.Counter', 'most_common', 'pwned')
    assert run_with_stdlib_pickle(payload, 'collections.Counter.most_common') == 'pwned'
    message = assert_refused(write_like_torch_save(tmp_path / 'counter.pth', payload, tmp_path),
                             'Nothing it names was run')
    assert 'weights.pth' in message  # says what to do with a trusted file


def test_build_on_allowed_function_is_refused(tmp_path):
    # a global torch's weights-only unpickler itself resolves (a function with state)
    target = torch.serialization._get_layout
    before = dict(vars(target))
    payload = build_payload('torch.serialization._get_layout', 'cache', 'pwned')
    assert_refused(write_like_torch_save(tmp_path / 'layout.pth', payload, tmp_path))
    assert vars(target) == before and vars(target)['cache'] is before['cache']


@pytest.mark.parametrize('function, command', [
    ('os.system', 'touch {marker}'),
    ('builtins.eval', "open({marker!r}, 'w').close()"),
])
def test_reduce_of_dangerous_function_is_refused(tmp_path, function, command):
    marker = tmp_path / 'pwned'
    payload = reduce_payload(function, command.format(marker=str(marker)))
    run_with_stdlib_pickle(payload, '0')
    assert marker.exists()  # the payload works on a plain unpickler
    marker.unlink()
    assert_refused(write_like_torch_save(tmp_path / 'reduce.pth', payload, tmp_path),
                   function.rsplit('.', 1)[1])
    assert not marker.exists()


def test_unknown_global_is_refused(tmp_path):
    payload = (pickle.PROTO + b'\x02' + _global('mypackage.models.FancyNet') +
               pickle.EMPTY_TUPLE + pickle.NEWOBJ + pickle.STOP)
    assert_refused(write_like_torch_save(tmp_path / 'fancy.pth', payload, tmp_path),
                   'mypackage.models.FancyNet')


def test_pickled_object_of_a_real_class_is_refused(tmp_path):
    marker = tmp_path / 'pwned'

    class Payload:

        def __reduce__(self):  # unpickling would call open(marker, 'w')
            return open, (str(marker), 'w')

    path = tmp_path / 'evil.pth'
    torch.save({'model': {'w': torch.ones(2)}, 'payload': Payload()}, path)
    assert_refused(path, 'open')
    assert not marker.exists()


def test_truncated_zip_is_refused(official_file, tmp_path):
    data = official_file[0].read_bytes()
    path = tmp_path / 'partial.pth'
    path.write_bytes(data[:len(data) // 2])
    assert_refused(path, 'truncated or corrupt', 'download or copy it again')


@pytest.mark.parametrize('content', [b'model = dict(type="MSVMamba")\n', b''])
def test_non_checkpoint_file_is_refused(tmp_path, content):
    path = tmp_path / 'config.pth'
    path.write_bytes(content)
    assert_refused(path, 'not a PyTorch checkpoint' if content else 'empty')
    assert_refused(tmp_path / 'absent.pth', 'no such checkpoint file')


def test_refusal_reaches_init_cfg_and_converter(tmp_path):
    """The same loader behind init_cfg / load_pretrained and the converter."""
    path = write_like_torch_save(tmp_path / 'counter.pth',
                                 build_payload('collections.Counter', 'most_common', 'x'),
                                 tmp_path)
    backbone = MSVMamba(SMALL_MASTER, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(CheckpointError, match='counter.pth: refused'):
        backbone.init_weights()
    converter = load_converter()
    with pytest.raises(SystemExit, match='counter.pth: refused'):
        converter.main([str(path), str(tmp_path / 'out.pth')])
    assert collections.Counter.__dict__['most_common'] is COUNTER_METHOD


# --------------------------------------------------------------------- loud loading
@pytest.fixture
def log_levels(monkeypatch):
    """The levels of the loader's summary logs."""
    levels = []
    monkeypatch.setattr(checkpoint_module, '_log', lambda message, level: levels.append(level))
    return levels


def test_dense_backbone_from_classification_file_loads_quietly(official_file, log_levels):
    """The normal det/seg path: outnorm* missing and classifier.* unused, as expected."""
    path, model_sd, _ = official_file
    backbone = MSVMamba(SMALL_MASTER, out_indices=(0, 1, 2, 3), final_norm=False)
    report = load_pretrained(backbone, str(path))
    assert sorted(report.missing) == sorted(f'outnorm{i}.{p}' for i in range(4)
                                            for p in ('weight', 'bias'))
    assert sorted(report.unexpected) == sorted(k for k in model_sd if 'classifier' in k)
    assert 'only in one mode, as expected' in report.message
    assert 'outnorm*.weight (x4)' in report.message and 'partial' not in report.message
    assert log_levels == [logging.INFO]
    assert_loaded(backbone, model_sd)


def dense_detector_state(seed: int = 0) -> dict:
    """A whole-detector state dict (mmengine layout): backbone in dense mode + others."""
    torch.manual_seed(seed)
    backbone = MSVMamba(SMALL_MASTER, out_indices=(0, 1, 2, 3), final_norm=False)
    state = {'backbone.' + k: v for k, v in backbone.state_dict().items()}
    state.update({'neck.lateral_convs.0.conv.weight': torch.randn(8, 16, 1, 1),
                  'rpn_head.rpn_conv.weight': torch.randn(8, 8, 3, 3)})
    return state


def test_classification_backbone_from_detector_loads_quietly(tmp_path, log_levels):
    """final_norm missing and outnorm* unused: moving between modes is expected."""
    state = dense_detector_state()
    path = tmp_path / 'det.pth'
    torch.save({'meta': {}, 'state_dict': state}, path)
    backbone = MSVMamba(SMALL_MASTER)
    report = load_pretrained(backbone, str(path), prefix='backbone.')
    assert sorted(report.missing) == ['final_norm.bias', 'final_norm.weight']
    assert sorted(report.unexpected) == sorted(f'outnorm{i}.{p}' for i in range(4)
                                               for p in ('weight', 'bias'))
    assert log_levels == [logging.INFO]
    assert_loaded(backbone, state, prefix='backbone.')


@pytest.mark.parametrize('extra, hint', [
    (True, "the backbone weights start with 'backbone.': use prefix='backbone.'"),
    (False, "every key starts with 'backbone.': use prefix='backbone.'"),
])
def test_detector_checkpoint_without_prefix_raises(tmp_path, extra, hint):
    state = dense_detector_state()
    if not extra:
        state = {k: v for k, v in state.items() if k.startswith('backbone.')}
    path = tmp_path / 'det.pth'
    torch.save({'meta': {}, 'state_dict': state}, path)
    backbone = MSVMamba(SMALL_MASTER, out_indices=(0, 1, 2, 3), final_norm=False,
                        init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        backbone.init_weights()
    message = str(info.value)
    assert 'holds no weight of this MSVMamba' in message and hint in message
    assert 'backbone.* (x' in message  # what the keys look like
    assert ('neck.* (x1)' in message) == extra
    for k, v in backbone.state_dict().items():  # nothing was loaded
        torch.testing.assert_close(v, before[k])


@pytest.mark.parametrize('keys', [['conv1.weight', 'fc.weight'],
                                  ['outnorm0.weight', 'final_norm.weight']])
def test_file_without_backbone_weights_raises(tmp_path, keys):
    """Unrelated weights, or only the mode-dependent norms: nothing of the backbone."""
    path = tmp_path / 'other.pth'
    torch.save({k: torch.ones(16) for k in keys}, path)
    with pytest.raises(CheckpointError, match='holds no weight.*look like MSVMamba'):
        load_pretrained(MSVMamba(SMALL_MASTER), str(path), strict=False)


def test_missing_weights_raise_unless_strict_false(official_file, tmp_path, log_levels):
    _, model_sd, _ = official_file
    partial = {k: v for k, v in model_sd.items() if not k.startswith('layers.1.')}
    path = tmp_path / 'partial.pth'
    torch.save({'model': partial}, path)
    backbone = MSVMamba(SMALL_MASTER, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(CheckpointError) as info:
        backbone.init_weights()
    message = str(info.value)
    assert 'missing in checkpoint: layers.*.blocks.*.norm.weight' in message
    assert 'strict=False' in message and 'outnorm' not in message

    backbone = MSVMamba(SMALL_MASTER, init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                                    strict=False))
    backbone.init_weights()
    assert log_levels == [logging.WARNING]
    assert_loaded(backbone, partial)


def test_unused_weights_raise_unless_strict_false(tmp_path):
    """A file of a deeper model: its extra blocks would silently be dropped."""
    deeper = MSVMamba(dict(SMALL_MASTER, depths=(1, 2, 1, 1))).state_dict()
    path = tmp_path / 'deeper.pth'
    torch.save(deeper, path)
    with pytest.raises(CheckpointError,
                       match='in checkpoint but not in the model: layers.*.blocks.*'):
        load_pretrained(MSVMamba(SMALL_MASTER), str(path))
    report = load_pretrained(MSVMamba(SMALL_MASTER), str(path), strict=False)
    assert report.unexpected and all(k.startswith('layers.1.blocks.1.')
                                     for k in report.unexpected)


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
    with pytest.raises(CheckpointError, match="prefix 'model.'.*backbone.\\* \\(x"):
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
    with pytest.raises(CheckpointError,
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
        type='ImageClassifier', _scope_='mmpretrain',
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
