"""projects.msvmamba_mm in-process: mmengine checkpoints under torch.load's weights_only
default (save, load, resume), the CPU DDP wrapper on gloo, and the config preparation
of the tools (errors included). mmengine only, no model zoo: seconds."""
import argparse
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import projects.msvmamba_mm  # noqa: F401  (applies the fixes, registers the wrapper)
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.registry import MODEL_WRAPPERS
from mmengine.runner import Runner
from projects.msvmamba_mm import cli, distributed
from projects.msvmamba_mm.errors import UserError
from projects.msvmamba_mm.scopes import SCOPES, scope_of

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


class ToyModel(BaseModel):
    def __init__(self, norm=nn.BatchNorm1d):
        super().__init__()
        self.linear = nn.Linear(2, 4)
        self.norm = norm(4)
        self.head = nn.Linear(4, 1)

    def forward(self, inputs, labels=None, mode='tensor'):
        out = self.head(self.norm(self.linear(inputs)))
        if mode == 'loss':
            return dict(loss=((out.squeeze(1) - labels) ** 2).mean())
        return out


class ToyDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return dict(inputs=torch.tensor([i / 8, 1 - i / 8]), labels=torch.tensor(i / 8))


class NumpyInfoHook(Hook):
    """Puts numpy values in the message hub, as CheckpointHook's best scores do."""

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        runner.message_hub.update_info('best_score', np.float64(0.5 + runner.iter))
        runner.message_hub.update_info('history', np.arange(3, dtype=np.int64))


def _toy_runner(work_dir, name, checkpoint_hook='CheckpointHook', **kwargs):
    return Runner(
        model=ToyModel(), work_dir=str(work_dir), experiment_name=name,
        train_dataloader=dict(
            dataset=ToyDataset(), batch_size=4, num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.01)),
        param_scheduler=dict(type='LinearLR', start_factor=0.1, by_epoch=False,
                             begin=0, end=10),
        train_cfg=dict(by_epoch=False, max_iters=2),
        default_hooks=dict(checkpoint=dict(type=checkpoint_hook, by_epoch=False,
                                           interval=1)),
        custom_hooks=[NumpyInfoHook()], log_level='WARNING', **kwargs)


@pytest.fixture(scope='module')
def toy_checkpoints(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('toy_train')
    _toy_runner(work_dir, 'toy_train').train()
    return work_dir


def test_mmengine_checkpoint_loads_with_weights_only(toy_checkpoints):
    ckpt = torch.load(toy_checkpoints / 'iter_2.pth')  # torch's default: weights_only
    hub = ckpt['message_hub']
    assert isinstance(hub['log_scalars']['train/loss'], HistoryBuffer)
    assert hub['runtime_info']['best_score'] == np.float64(1.5)  # seen at iteration 2
    assert hub['runtime_info']['history'].tolist() == [0, 1, 2]
    assert ckpt['meta']['iter'] == 2


def test_torch_load_refuses_mmengine_checkpoint_without_the_fix(toy_checkpoints):
    """The failure the fix is for, and that importing the project is what fixes it
    (a fresh interpreter: in this one the fix is applied already)."""
    script = f"""
import pickle, torch
path = {str(toy_checkpoints / 'iter_1.pth')!r}
try:
    torch.load(path)
except pickle.UnpicklingError as e:
    print('refused:', 'HistoryBuffer' in str(e))
import projects.msvmamba_mm
print('loaded:', torch.load(path)['meta']['iter'])
"""
    run = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                         cwd=REPO)
    assert run.stdout.split('\n')[:2] == ['refused: True', 'loaded: 1'], run.stderr


class _GetattrPayload:
    """Pickles as getattr(owner, name), like HistoryBuffer's statistics methods."""

    def __init__(self, owner, name):
        self.owner, self.name = owner, name

    def __reduce__(self):
        return getattr, (self.owner, self.name)


@pytest.mark.parametrize('owner,name', [(HistoryBuffer, '__init__'), (np.ndarray, 'tofile'),
                                        (HistoryBuffer, '__class__')])
def test_weights_only_still_refuses_other_getattr(tmp_path, owner, name):
    path = tmp_path / 'evil.pth'
    torch.save({'x': _GetattrPayload(owner, name)}, path)
    with pytest.raises(Exception, match='is not allowed'):
        torch.load(path)
    torch.save({'mean': _GetattrPayload(HistoryBuffer, 'mean')}, path)
    assert torch.load(path)['mean'] is HistoryBuffer.mean


def test_resume_restores_iteration_optimizer_and_scheduler(toy_checkpoints, tmp_path):
    reference = torch.load(toy_checkpoints / 'iter_2.pth')
    runner = _toy_runner(tmp_path, 'toy_resume', resume=True,
                         load_from=str(toy_checkpoints / 'iter_1.pth'))
    runner.train()
    assert runner.iter == 2
    resumed = torch.load(tmp_path / 'iter_2.pth')
    steps = {float(s['step']) for s in resumed['optimizer']['state'].values()}
    assert steps == {2.0}  # 1 step before the checkpoint + 1 after resuming
    assert resumed['param_schedulers'] == reference['param_schedulers']
    assert (resumed['optimizer']['param_groups'][0]['lr']
            == reference['optimizer']['param_groups'][0]['lr'])
    assert runner.message_hub.get_info('best_score') == np.float64(1.5)


@pytest.mark.parametrize('layout', ['official', 'another model', 'fits'])
def test_checkpoint_that_loads_nothing_is_refused(toy_checkpoints, tmp_path, layout):
    """Our checkpoint hook (every config sets it) refuses a load_from / tools/test.py
    checkpoint with no weight of the model; mmengine alone only logs the missing keys and
    goes on with random weights. A checkpoint that fits still loads."""
    from projects.msvmamba_mm.checkpoints import UnusableCheckpointError
    weights = torch.load(toy_checkpoints / 'iter_2.pth')['state_dict']
    path = tmp_path / 'weights.pth'
    if layout == 'official':  # the released files: {'model': ...}, original names
        torch.save({'model': weights}, path)
    elif layout == 'another model':
        torch.save({'state_dict': {'backbone.' + k: v for k, v in weights.items()}}, path)
    else:
        torch.save({'state_dict': weights, 'meta': {}}, path)
    runner = _toy_runner(tmp_path, f'toy_{layout}', load_from=str(path),
                         checkpoint_hook='PreemptionSafeCheckpointHook')
    if layout == 'fits':
        runner.load_checkpoint(str(path))  # what train() / test() do first, hooks included
        assert torch.equal(runner.model.linear.weight.detach(), weights['linear.weight'])
        return
    with pytest.raises(UnusableCheckpointError) as info:
        runner.train()
    message = str(info.value)
    assert str(path) in message and 'would load no weight into the ToyModel' in message
    assert ('msvmamba2mmpretrain.py' if layout == 'official' else 'another model') in message


# --------------------------------------------------------------------------------------
# distributed on CPU
# --------------------------------------------------------------------------------------
@pytest.mark.skipif(distributed.has_accelerator(), reason='the CPU path of the wrapper')
def test_cpu_launch_uses_gloo_and_cpu_ddp(monkeypatch, free_port):
    for key, value in dict(RANK='0', WORLD_SIZE='1', LOCAL_RANK='0',
                           MASTER_ADDR='127.0.0.1', MASTER_PORT=str(free_port)).items():
        monkeypatch.setenv(key, value)
    cfg = Config(dict(env_cfg=dict(dist_cfg=dict(backend='nccl', timeout=60))))
    try:
        distributed.setup_launcher(cfg, 'pytorch')
        assert torch.distributed.get_backend() == 'gloo'
        assert cfg.env_cfg.dist_cfg.backend == 'gloo' and cfg.launcher == 'pytorch'
        assert cfg.model_wrapper_cfg.type == distributed.WRAPPER_NAME
        # what Runner.wrap_model does with it
        model = ToyModel(norm=nn.SyncBatchNorm)
        ddp = MODEL_WRAPPERS.build(cfg.model_wrapper_cfg,
                                   default_args=dict(module=model, device_ids=[0]))
        assert isinstance(ddp, distributed.CPUCapableDDP) and ddp.device_ids is None
        assert not any(isinstance(m, nn.SyncBatchNorm) for m in ddp.modules())
        from mmengine.optim import OptimWrapper
        optim = OptimWrapper(torch.optim.SGD(ddp.parameters(), lr=0.1))
        before = ddp.module.head.weight.detach().clone()
        data = dict(inputs=torch.rand(4, 2), labels=torch.rand(4))
        losses = ddp.train_step(data, optim)
        assert torch.isfinite(losses['loss'])
        assert not torch.equal(before, ddp.module.head.weight)
    finally:
        distributed.shutdown()


def test_pytorch_launcher_outside_torchrun_is_a_user_error(monkeypatch):
    for key in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(UserError, match='torchrun'):
        distributed.setup_launcher(Config(dict()), 'pytorch')


# --------------------------------------------------------------------------------------
# the tools' entry points and config preparation
# --------------------------------------------------------------------------------------
CLS_CONFIG = osp.join(REPO, 'tests', 'tools', 'configs', 'resnet18_tiny-imagenet.py')


@pytest.mark.parametrize('main,args,message', [
    ('train', ['{bad_scope}'], "unknown default_scope 'mmfoo' in {bad_scope}; known "
     'scopes: mmdet, mmpretrain, mmseg'),
    ('train', ['{no_scope}'], '{no_scope} sets no default_scope'),
    ('train', [CLS_CONFIG, '--resume', 'no/iter_9.pth'],
     '--resume: checkpoint not found: no/iter_9.pth'),
    ('train', [CLS_CONFIG, '--auto-scale-lr', '--cfg-options', 'auto_scale_lr=None'],
     '--auto-scale-lr needs auto_scale_lr'),
    ('test', [CLS_CONFIG, 'no/ckpt.pth'], 'checkpoint not found: no/ckpt.pth'),
    ('test', [CLS_CONFIG, CLS_CONFIG, '--out', 'r.json'], '--out must name a .pkl'),
])
def test_tools_user_errors(tmp_path, capsys, main, args, message):
    """What tools/train.py and tools/test.py print and return (exit status 2, one line)
    for mistakes; checked before anything is built."""
    paths = dict(bad_scope=tmp_path / 'bad_scope.py', no_scope=tmp_path / 'no_scope.py')
    paths['bad_scope'].write_text("default_scope = 'mmfoo'\n")
    paths['no_scope'].write_text('model = dict()\n')
    args = [a.format(**paths) for a in args]
    entry = cli.train_main if main == 'train' else cli.test_main
    assert entry(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: ' + message.format(**paths)), err


def test_damaged_backbone_checkpoint_is_one_line(tmp_path, capsys):
    """A pretrained file that exists but is damaged passes the tools' early checks and is
    only read in ``init_weights``: the backbone loader's error still ends as one line naming
    the file (exit status 2), while any other exception keeps its traceback."""
    from projects.msvmamba import MSVMamba, load_pretrained
    damaged = tmp_path / 'msvmamba_nano_in1k.pth'
    damaged.write_bytes(b'PK\x03\x04' + bytes(64))  # a zip header, then nothing
    backbone = MSVMamba(arch='nano')

    def train(argv):
        load_pretrained(backbone, str(damaged))

    assert cli.run_main(train, []) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: ') and str(damaged) in err[0], err

    def broken(argv):
        raise ZeroDivisionError('a bug, not a user mistake')

    with pytest.raises(ZeroDivisionError):
        cli.run_main(broken, [])


def _train_args(**kwargs):
    args = dict(config='configs/x.py', work_dir=None, resume=None, amp=False,
                auto_scale_lr=False)
    return argparse.Namespace(**{**args, **kwargs})


def test_scope_of_names_the_known_scopes():
    assert scope_of(Config(dict(default_scope='mmseg')), 'c.py') is SCOPES['mmseg']
    with pytest.raises(UserError, match="unknown default_scope 'mmfoo'.*mmdet, mmpretrain, "
                       'mmseg'):
        scope_of(Config(dict(default_scope='mmfoo')), 'c.py')
    with pytest.raises(UserError, match='sets no default_scope'):
        scope_of(Config(dict()), 'c.py')


def test_prepare_train_config(tmp_path):
    cfg = cli.prepare_train_config(Config(dict()), _train_args(resume='auto'))
    assert cfg.resume is True and cfg.load_from is None
    assert cfg.work_dir == osp.join('./work_dirs', 'x')
    ckpt = tmp_path / 'iter_1.pth'
    ckpt.write_bytes(b'')
    cfg = cli.prepare_train_config(Config(dict(work_dir='w')),
                                   _train_args(resume=str(ckpt)))
    assert cfg.load_from == str(ckpt) and cfg.work_dir == 'w'
    with pytest.raises(UserError, match='checkpoint not found: nowhere.pth'):
        cli.prepare_train_config(Config(dict()), _train_args(resume='nowhere.pth'))
    with pytest.raises(UserError, match='base_batch_size'):
        cli.prepare_train_config(Config(dict()), _train_args(auto_scale_lr=True))
    cfg = cli.prepare_train_config(Config(dict(auto_scale_lr=dict(base_batch_size=16))),
                                   _train_args(auto_scale_lr=True))
    assert cfg.auto_scale_lr.enable is True


def _test_args(checkpoint, **kwargs):
    args = dict(config='c.py', checkpoint=str(checkpoint), work_dir=None, out=None,
                show_dir=None, tta=False)
    return argparse.Namespace(**{**args, **kwargs})


@pytest.mark.parametrize('scope,expected', [
    ('mmdet', dict(draw=True, test_out_dir='{show}')),
    ('mmseg', dict(draw=True, interval=1)),
    ('mmpretrain', dict(enable=True, out_dir='{show}', interval=1)),
])
def test_prepare_test_config_show_dir(tmp_path, monkeypatch, scope, expected):
    monkeypatch.chdir(tmp_path)
    show = str(tmp_path / 'show')
    expected = {k: v.format(show=show) if isinstance(v, str) else v
                for k, v in expected.items()}
    ckpt = tmp_path / 'c.pth'
    ckpt.write_bytes(b'')
    cfg = Config(dict(default_hooks=dict(visualization=dict(type='V')), visualizer=dict()))
    cli.prepare_test_config(cfg, _test_args(ckpt, show_dir='show'), SCOPES[scope])
    hook = cfg.default_hooks.visualization
    assert {k: hook[k] for k in expected} == expected and cfg.load_from == str(ckpt)
    if scope == 'mmseg':
        assert cfg.visualizer.save_dir == show


def test_prepare_test_config_tta_and_errors(tmp_path):
    ckpt = tmp_path / 'c.pth'
    ckpt.write_bytes(b'')
    scope = SCOPES['mmpretrain']
    base = dict(model=dict(type='M'),
                test_dataloader=dict(dataset=dict(type='Repeat', dataset=dict(type='D'))))
    cfg = Config(dict(base, tta_model=dict(type='TTA'), tta_pipeline=[dict(type='T')]))
    cli.prepare_test_config(cfg, _test_args(ckpt, tta=True), scope)
    assert cfg.model.type == 'TTA' and cfg.model.module.type == 'M'
    assert cfg.test_dataloader.dataset.dataset.pipeline == [dict(type='T')]
    with pytest.raises(UserError, match='--tta needs tta_model and tta_pipeline'):
        cli.prepare_test_config(Config(base), _test_args(ckpt, tta=True), scope)
    with pytest.raises(UserError, match='checkpoint not found'):
        cli.prepare_test_config(Config(base), _test_args(tmp_path / 'no.pth'), scope)
    with pytest.raises(UserError, match='--out must name a .pkl'):
        cli.prepare_test_config(Config(base), _test_args(ckpt, out='r.json'), scope)
    with pytest.raises(UserError, match='default_hooks.visualization'):
        cli.prepare_test_config(Config(base), _test_args(ckpt, show_dir='s'), scope)
    with pytest.raises(UserError, match='--show-dir cannot be combined with --tta'):
        cli.prepare_test_config(Config(base), _test_args(ckpt, show_dir='s', tta=True), scope)


def test_loaded_config_dumps_unformatted_and_reads_back_equal(tmp_path):
    """The tools load configs without mmengine's yapf pass over the config text (the
    Runner logs, dumps and checkpoints it: about 1 s a call on a CPU); the text is still
    the config: dumped and read back, it is equal."""
    cfg = cli.load_config(CLS_CONFIG, {'train_dataloader.batch_size': 7})
    path = tmp_path / 'dumped.py'
    cfg.dump(str(path))
    assert Config.fromfile(str(path)).to_dict() == cfg.to_dict()
    assert '\ntrain_dataloader=dict(\n' in path.read_text()  # no yapf: 'x = dict('
