"""The MSVMamba-Nano experiment configs end to end on the CPU: tools/train.py,
tools/test.py and tools/dist_train.sh as subprocesses on tiny on-disk datasets.

Each run uses the REAL config through a derived config (the ``tiny_config`` fixture of
tests/conftest.py) that ``_base_``s it and overrides only what a tiny CPU run needs.

The training runs are module-scoped fixtures: each model is trained once and several
tests read its work dir.
"""
import re

import pytest
import torch

import projects.msvmamba_mm  # noqa: F401  (torch.load of mmengine checkpoints)


@pytest.fixture(scope='module')
def ws(tmp_path_factory, tiny, tool_runner):
    """(folder the tools run in, its ``run(script, *args)``) with the tiny datasets."""
    root = tmp_path_factory.mktemp('msvmamba_e2e')
    tiny.make_coco(str(root / 'data' / 'tiny_coco'), splits=dict(train=2, val=2))
    tiny.make_ade20k(str(root / 'data' / 'tiny_ade20k'), splits=dict(train=2, val=2))
    # per class: 3 classes x 2 train images, x 1 val image
    tiny.make_imagenet(str(root / 'data' / 'tiny_imagenet'), splits=dict(train=2, val=1))
    yield root, tool_runner(root)
    for checkpoint in root.rglob('*.pth'):  # about 2 GB of them
        checkpoint.unlink()


@pytest.fixture(scope='module')
def trained(ws, tiny_config):
    """``trained(kind)``: (config, work dir) of a tools/train.py run, once per module."""
    root, run = ws
    done = {}

    def get(kind):
        if kind not in done:
            cfg = tiny_config(root, kind, batch_size=3 if kind == 'cls' else 2)
            work_dir = root / f'train_{kind}'
            run('train.py', cfg, '--work-dir', work_dir).check()
            done[kind] = cfg, work_dir
        return done[kind]

    return get


LAST = {'det': 'epoch_2.pth', 'seg': 'iter_2.pth', 'cls': 'epoch_1.pth'}


def _evaluate(ws, trained, kind):
    """Train ``kind`` (2 iterations), then tools/test.py on the last checkpoint; returns
    test.py's output."""
    root, run = ws
    cfg, work_dir = trained(kind)
    assert torch.load(work_dir / LAST[kind])['meta']['iter'] == 2
    return run('test.py', cfg, work_dir / LAST[kind],
               '--work-dir', root / f'test_{kind}').check().out


def _metric(out, key):
    """The value mmengine's logger prints as ``key: value`` (last occurrence)."""
    found = re.findall(re.escape(key) + r': (-?[0-9.]+)', out)
    assert found, f'{key} not in the output:\n{out[-3000:]}'
    return float(found[-1])


def test_mask_rcnn_trains_and_evaluates_coco_bbox_segm(ws, trained):
    out = _evaluate(ws, trained, 'det')
    for key in ('coco/bbox_mAP', 'coco/segm_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP_50'):
        value = _metric(out, key)
        assert value == -1 or 0 <= value <= 1, (key, value)


def test_mask_rcnn_resume_continues_with_optimizer_and_scheduler_state(ws, trained):
    root, run = ws
    cfg, work_dir = trained('det')
    resume_dir = root / 'resume_det'
    out = run('train.py', cfg, '--work-dir', resume_dir,
              '--resume', work_dir / 'epoch_1.pth').check().out
    assert 'resumed epoch: 1, iter: 1' in out
    # only epoch 2 (= iteration 2) was trained
    assert re.findall(r'Epoch\(train\) \[(\d+)\]', out) == ['2']
    assert not (resume_dir / 'epoch_1.pth').exists()
    reference, resumed = (torch.load(d / 'epoch_2.pth') for d in (work_dir, resume_dir))
    assert resumed['meta']['iter'] == reference['meta']['iter'] == 2
    assert resumed['meta']['epoch'] == reference['meta']['epoch'] == 2
    # message hub: 0-based index of the last iteration / epoch run
    hubs = [c['message_hub']['runtime_info'] for c in (reference, resumed)]
    assert [(h['iter'], h['epoch']) for h in hubs] == [(1, 1), (1, 1)]
    assert resumed['param_schedulers'] == reference['param_schedulers']
    lrs = [[g['lr'] for g in c['optimizer']['param_groups']] for c in (reference, resumed)]
    assert lrs[0] == lrs[1]
    steps = {float(s['step']) for s in resumed['optimizer']['state'].values()}
    assert steps == {2.0}  # AdamW state carried over from iteration 1


def test_upernet_trains_and_evaluates_miou(ws, trained):
    out = _evaluate(ws, trained, 'seg')
    for key in ('aAcc', 'mIoU', 'mAcc'):
        assert 0 <= _metric(out, key) <= 100, key


def test_classifier_trains_and_evaluates_top1(ws, trained):
    out = _evaluate(ws, trained, 'cls')
    for key in ('accuracy/top1', 'accuracy/top5'):
        assert 0 <= _metric(out, key) <= 100, key


def test_dist_train_two_cpu_processes_writes_the_same_checkpoint_format(ws, trained,
                                                                           tiny_config):
    root, run = ws
    (root / 'dist').mkdir()
    cfg = tiny_config(root / 'dist', 'det', batch_size=1)
    work_dir = root / 'dist_train_det'
    out = run('dist_train.sh', cfg, 2, '--work-dir', work_dir,
              '--cfg-options', 'train_cfg.max_epochs=1').check().out
    assert 'Distributed training: True' in out and "'backend': 'gloo'" in out
    # parameters and gradients share one layout: DDP copies no gradient into its buckets
    assert 'Grad strides do not match bucket view strides' not in out
    dist_ckpt = torch.load(work_dir / 'epoch_1.pth')
    assert dist_ckpt['meta']['iter'] == 1  # 2 images, 1 per process
    single = torch.load(trained('det')[1] / 'epoch_1.pth')
    assert list(dist_ckpt['state_dict']) == list(single['state_dict'])
    assert set(dist_ckpt) == set(single)
    for key, value in single['state_dict'].items():
        assert dist_ckpt['state_dict'][key].shape == value.shape, key
