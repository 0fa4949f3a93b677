"""The configs through the OpenMMLab packages' OWN entry points, not this repository's.

mmdet, mmseg and mmpretrain ship their ``tools/train.py`` and ``tools/test.py`` inside the
installed package (``<package>/.mim/tools/``), and ``mim train`` / ``mim test`` (OpenMIM)
run those. The tests run them from a folder outside the checkout with no ``PYTHONPATH``, so
everything a config needs at run time must come through the config's own
``custom_imports``: the backbone (``projects.msvmamba``); the torch >= 2.6 fix for loading
mmengine checkpoints, the hooks and the model wrapper (``projects.msvmamba_mm``); and
``projects`` itself must be importable as an installed package. Each case goes through
the one end-to-end helper (``e2e``, tests/conftest.py): train one step, then the same
package's ``tools/test.py`` on its checkpoint. The quick-start config goes through ``mim``
and also resumes (``--resume``: the work dir's latest checkpoint) for a second step before
the test; the others (the tiny MSVMamba-Nano configs) go through the scripts.
"""
import importlib.util
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

import projects.msvmamba_mm  # noqa: F401  (torch.load of mmengine checkpoints)

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
QUICK_START = osp.join(REPO, 'configs', 'quick_start', 'mask_rcnn_msvmamba_n_tiny_coco.py')
NO_PYTHONPATH = {'PYTHONPATH': ''}  # an empty PYTHONPATH adds nothing to sys.path


def shipped_tool(package: str, name: str) -> str:
    """Path of ``tools/<name>`` as shipped inside the installed ``package``."""
    path = osp.join(osp.dirname(importlib.util.find_spec(package).origin), '.mim', 'tools',
                    name)
    assert osp.isfile(path), f'{package} ships no {name} at {path}'
    return path


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


# case -> (package, config kind, its cfg-options: the quick start as the tiny configs,
# one step per run, the package's test.py evaluates)
CASES = {
    'mim-mmdet-quick_start': ('mmdet', 'quick_start',
                              ['--cfg-options', 'train_cfg.max_iters=1',
                               'train_cfg.val_begin=1000000',
                               'train_dataloader.batch_size=2',
                               'default_hooks.checkpoint.interval=1']),
    'mmdet-mask_rcnn': ('mmdet', 'det', []),
    'mmseg-upernet': ('mmseg', 'seg', []),
    'mmpretrain-classifier': ('mmpretrain', 'cls', []),
}


def package_tools(tool_runner, cwd, package: str, via_mim: bool):
    """Tools (tests/conftest.py) running the package's shipped scripts, or ``mim train/test
    <package>`` (on the CPU: ``--gpus 0``), in ``cwd`` without PYTHONPATH."""
    run = tool_runner(cwd)
    if via_mim:
        mim = osp.join(osp.dirname(sys.executable), 'mim')
        assert osp.isfile(mim), f'no mim next to {sys.executable}: pip install openmim'

        def train(config, *args):
            return run(mim, 'train', package, config, '--gpus', '0', *args,
                       env=NO_PYTHONPATH).check().out

        def test(config, checkpoint, *args):
            return run(mim, 'test', package, config, '--checkpoint', checkpoint, *args,
                       env=NO_PYTHONPATH).check().out
    else:
        scripts = {name: shipped_tool(package, f'{name}.py') for name in ('train', 'test')}

        def train(config, *args):
            return run(scripts['train'], config, *args, env=NO_PYTHONPATH).check().out

        def test(config, checkpoint, *args):
            return run(scripts['test'], config, checkpoint, *args, env=NO_PYTHONPATH).check().out
    return train, test


@pytest.mark.parametrize('case', list(CASES))
def test_package_tools_train_and_test(case, e2e_root, tmp_path, tiny_config, tool_runner,
                                         e2e):
    package, kind, options = CASES[case]
    assert not str(e2e_root).startswith(REPO)
    config = QUICK_START if kind == 'quick_start' else tiny_config(tmp_path, kind)
    train, test = package_tools(tool_runner, e2e_root, package, case.startswith('mim-'))
    e2e((train, test), config, tmp_path, 'det' if kind == 'quick_start' else kind,
        resume='auto' if kind == 'quick_start' else None, train_args=options)
    if kind == 'quick_start':  # its SaveInitCheckpointHook (custom_hooks) ran
        init = torch.load(tmp_path / 'train' / 'iter_0.pth', map_location='cpu')
        assert init['meta']['iter'] == 0
