"""The configs through the OpenMMLab packages' OWN entry points, not this repository's.

mmdet, mmseg and mmpretrain ship their ``tools/train.py`` and ``tools/test.py`` inside the
installed package (``<package>/.mim/tools/``), and ``mim train`` / ``mim test`` (OpenMIM)
run those. The tests run them from a folder outside the checkout with no ``PYTHONPATH``, so
everything a config needs at run time must come through the config's own
``custom_imports``: the backbone (``projects.msvmamba``); the torch >= 2.6 fix for loading
mmengine checkpoints, the hooks and the model wrapper (``projects.msvmamba_mm``); and
``projects`` itself must be importable as an installed package. Per config: train 2
iterations, ``--resume`` to 4, then the same package's ``tools/test.py`` on the last
checkpoint. The quick-start config goes through ``mim``, the others through the scripts.
"""
import importlib.util
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch

import projects.msvmamba_mm  # noqa: F401  (torch.load of mmengine checkpoints)

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
QUICK_START = osp.join(REPO, 'configs', 'quick_start', 'mask_rcnn_msvmamba_n_tiny_coco.py')
NO_PYTHONPATH = {'PYTHONPATH': ''}  # an empty PYTHONPATH adds nothing to sys.path
NO_VAL = 'train_cfg.val_begin=1000000'  # the package's test.py evaluates instead


def shipped_tool(package: str, name: str) -> str:
    """Path of ``tools/<name>`` as shipped inside the installed ``package``."""
    path = osp.join(osp.dirname(importlib.util.find_spec(package).origin), '.mim', 'tools',
                    name)
    assert osp.isfile(path), f'{package} ships no {name} at {path}'
    return path


@pytest.fixture(scope='module')
def outside(tmp_path_factory, tiny, tool_runner):
    """(folder outside the checkout with the tiny datasets, its runner)."""
    root = tmp_path_factory.mktemp('ecosystem')
    assert not str(root).startswith(REPO)
    tiny.make_coco(str(root / 'data' / 'tiny_coco'), splits=dict(train=2, val=2))
    tiny.make_coco(str(root / 'data' / 'quick_start' / 'tiny_coco'),
                   splits=dict(train=2, val=2))
    tiny.make_ade20k(str(root / 'data' / 'tiny_ade20k'), splits=dict(train=2, val=2))
    # per class: 3 classes x 2 train images, x 1 val image
    tiny.make_imagenet(str(root / 'data' / 'tiny_imagenet'), splits=dict(train=2, val=1))
    return root, tool_runner(root)


def test_projects_import_from_any_folder_with_registrations_only(tmp_path):
    """``projects`` is an installed (editable) package of THIS checkout, and importing
    projects.msvmamba_mm only registers and applies the checkpoint fix: no OpenMMLab task
    package, no process group, no file written."""
    code = '''
import os, sys, time
import torch, mmengine.model, mmengine.hooks  # what any mmengine run imports anyway
t0 = time.perf_counter()
import projects.msvmamba_mm
seconds = time.perf_counter() - t0
from mmengine.logging import HistoryBuffer
from mmengine.registry import HOOKS, MODEL_WRAPPERS
assert HOOKS.get('SaveInitCheckpointHook') is not None
assert MODEL_WRAPPERS.get('CPUCapableDDP') is not None
assert HistoryBuffer in torch.serialization.get_safe_globals()
heavy = sorted(m for m in ('mmdet', 'mmseg', 'mmpretrain', 'mmcv.ops') if m in sys.modules)
assert not heavy, heavy
assert not torch.distributed.is_initialized()
assert os.listdir('.') == [], os.listdir('.')
import projects
print('projects at', os.path.dirname(os.path.dirname(projects.__file__)))
print(f'import projects.msvmamba_mm after torch and mmengine: {seconds:.2f} s')
'''
    env = dict(os.environ, **NO_PYTHONPATH)
    proc = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    assert proc.returncode == 0, proc.stdout
    assert f'projects at {REPO}\n' in proc.stdout, proc.stdout


def _checkpoint(path):
    assert path.is_file(), f'{path} missing'
    return torch.load(path, map_location='cpu')


# case -> (package, config kind, cfg-options of the 2-iteration run, of the resume to 4
# iterations, checkpoints after 2 and after 4 iterations, a metric its test.py prints)
CASES = {
    'mim-mmdet-quick_start': ('mmdet', 'quick_start',
                              ['train_cfg.max_iters=2', NO_VAL,
                               'train_dataloader.batch_size=2',
                               'default_hooks.checkpoint.interval=2'],
                              ['train_cfg.max_iters=4'], ('iter_2.pth', 'iter_4.pth'),
                              'coco/bbox_mAP'),
    'mmdet-mask_rcnn': ('mmdet', 'det', [], ['train_cfg.max_epochs=4'],
                        ('epoch_2.pth', 'epoch_4.pth'), 'coco/segm_mAP'),
    'mmseg-upernet': ('mmseg', 'seg', [], ['train_cfg.max_iters=4'],
                      ('iter_2.pth', 'iter_4.pth'), 'mIoU'),
    'mmpretrain-classifier': ('mmpretrain', 'cls', [], ['train_cfg.max_epochs=2'],
                              ('epoch_1.pth', 'epoch_2.pth'), 'accuracy/top1'),
}


def package_commands(package: str, via_mim: bool):
    """(train, test) as functions of (run, config, args...) -> ToolRun: the package's
    shipped scripts, or ``mim train/test <package>`` (on the CPU: ``--gpus 0``)."""
    if via_mim:
        mim = osp.join(osp.dirname(sys.executable), 'mim')
        assert osp.isfile(mim), f'no mim next to {sys.executable}: pip install openmim'

        def train(run, config, *args):
            return run(mim, 'train', package, config, '--gpus', '0', *args,
                       env=NO_PYTHONPATH)

        def test(run, config, checkpoint, *args):
            return run(mim, 'test', package, config, '--checkpoint', checkpoint, *args,
                       env=NO_PYTHONPATH)
    else:
        scripts = {name: shipped_tool(package, f'{name}.py') for name in ('train', 'test')}

        def train(run, config, *args):
            return run(scripts['train'], config, *args, env=NO_PYTHONPATH)

        def test(run, config, checkpoint, *args):
            return run(scripts['test'], config, checkpoint, *args, env=NO_PYTHONPATH)
    return train, test


@pytest.mark.parametrize('case', list(CASES))
def test_package_tools_train_resume_test(case, outside, tiny_config):
    package, kind, first, resume, (after_2, after_4), metric = CASES[case]
    root, run = outside
    if kind == 'quick_start':
        config = QUICK_START
    else:
        (root / case).mkdir()
        config = tiny_config(root / case, kind, batch_size=3 if kind == 'cls' else 2)
    train, test = package_commands(package, via_mim=case.startswith('mim-'))
    work_dir = root / f'work_{case}'
    options = ['--cfg-options', *first] if first else []

    train(run, config, '--work-dir', work_dir, *options).check()
    assert _checkpoint(work_dir / after_2)['meta']['iter'] == 2
    if kind == 'quick_start':  # its SaveInitCheckpointHook (custom_hooks) ran
        assert _checkpoint(work_dir / 'iter_0.pth')['meta']['iter'] == 0

    out = train(run, config, '--work-dir', work_dir, '--resume', '--cfg-options', *first,
                *resume).check().out
    assert re.search(r'resumed epoch: \d+, iter: 2', out), out[-3000:]
    final = _checkpoint(work_dir / after_4)
    assert final['meta']['iter'] == 4
    # the optimizer state went on from the 2 resumed steps (AdamW counts its steps)
    steps = [float(s['step']) for s in final['optimizer']['state'].values()]
    assert max(steps) == 4.0, sorted(set(steps))

    out = test(run, config, work_dir / after_4, '--work-dir', root / f'test_{case}').check().out
    found = re.findall(re.escape(metric) + r': (-?[0-9.]+)', out)
    assert found, f'{metric} not in the output of {package}\'s test.py:\n{out[-3000:]}'
