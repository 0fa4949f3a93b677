"""Fixtures shared by the test folders that run the tools as subprocesses
(tests/tools, tests/configs): the tiny-datasets module, free TCP ports, a runner for
``tools/*.py`` / ``tools/*.sh`` (or any Python script) in a given working directory, and
tiny-data versions of the real experiment configs."""
import importlib.util
import os
import os.path as osp
import pprint
import socket
import subprocess
import sys
import time

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _load_tiny_datasets_module():
    path = osp.join(REPO, 'tools', 'dataset_converters', 'make_tiny_datasets.py')
    spec = importlib.util.spec_from_file_location('make_tiny_datasets', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port():
    """A TCP port nobody listens on now (for MASTER_PORT/PORT)."""
    return _free_port()


@pytest.fixture(scope='session')
def tiny():
    """The module tools/dataset_converters/make_tiny_datasets.py."""
    return _load_tiny_datasets_module()


class ToolRun:
    """A finished tool run: ``rc``, ``out`` (stdout + stderr), ``seconds``."""

    def __init__(self, cmd, proc, seconds):
        self.cmd, self.rc, self.out, self.seconds = cmd, proc.returncode, proc.stdout, seconds

    def check(self) -> 'ToolRun':
        assert self.rc == 0, (f'{" ".join(self.cmd)} exited {self.rc} after '
                              f'{self.seconds:.0f}s:\n{self.out[-6000:]}')
        return self


@pytest.fixture(scope='session')
def tool_runner():
    """``tool_runner(cwd)`` -> ``run(script, *args, env=None, timeout=300)``: runs
    ``tools/<script>`` or an absolute ``script`` (a .sh with bash, anything else with this
    interpreter) in ``cwd`` and returns a ToolRun. The launch scripts (``dist_*.sh``) get a free ``PORT`` unless
    ``env`` sets one."""

    def runner(cwd):
        def run(script, *args, env=None, timeout=300):
            # a path under tools/, or an absolute one (e.g. a package's shipped tools)
            path = osp.join(REPO, 'tools', script)
            cmd = (['bash', path] if script.endswith('.sh') else [sys.executable, path])
            cmd += [str(a) for a in args]
            full_env = dict(os.environ, PYTHON=sys.executable, PYTHONUNBUFFERED='1')
            # one OpenMP thread per process: on 2 cores shared with other work, 2
            # spinning threads made a ResNet-18 step 20x slower
            full_env.setdefault('OMP_NUM_THREADS', '1')
            if script.startswith('dist_'):
                full_env['PORT'] = str(_free_port())
            full_env.update(env or {})
            t0 = time.time()
            proc = subprocess.run(cmd, cwd=str(cwd), env=full_env, timeout=timeout,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
            return ToolRun(cmd, proc, time.time() - t0)

        return run

    return runner


# ---------------------------------------------------------------------------------------
# Tiny-data versions of the real MSVMamba-Nano experiment configs.
#
# Each derived config ``_base_``s the REAL config (model, optimizer, schedulers, train
# loop, hooks, custom_imports, the pipelines' transforms) and overrides only what a tiny CPU
# run needs: data roots (and the COCO class names / detection class count of the 3-class
# shapes data), image scales in the pipelines (divided by a constant), batch size,
# ``num_workers=0``, the number of epochs/iterations, checkpoint/log intervals, no
# validation during training (tools/test.py evaluates instead), ``init_cfg=None`` for the
# ImageNet-pretrained backbones, and for classification ``OptimWrapper`` instead of the
# GPU-only ``AmpOptimWrapper``. Data roots are relative: make the tiny datasets under
# ``data/tiny_{coco,ade20k,imagenet}`` of the folder the tools run in.

REAL_CONFIGS = {
    'det': osp.join(REPO, 'configs', 'mask_rcnn_msvmamba_n_1x.py'),
    'seg': osp.join(REPO, 'configs', 'upernet_msvmamba_n_160k_ade20k.py'),
    'cls': osp.join(REPO, 'configs', 'msvmamba_n_in1k.py'),
}
COCO_CLASSES = ('circle', 'square', 'triangle')  # make_tiny_datasets' default kinds
NO_VAL = 10**6  # val_begin past the end: no validation while training
SHRINK_KEYS = ('scale', 'scales', 'crop_size', 'img_scale')


def _divide(value, div):
    """A size, a (w, h) tuple or a list of them (e.g. RandomChoiceResize's ``scales``),
    divided by ``div`` (at least 1)."""
    if isinstance(value, (tuple, list)) and isinstance(value[0], (tuple, list)):
        return [_divide(v, div) for v in value]
    if isinstance(value, (tuple, list)):
        return tuple(max(1, round(v / div)) for v in value)
    return max(1, round(value / div))


def _shrink(obj, div):
    """``obj`` (a pipeline) with every scale/crop size divided by ``div``."""
    if isinstance(obj, list):
        return [_shrink(o, div) for o in obj]
    if not isinstance(obj, dict):
        return obj
    out = {}
    for key, value in obj.items():
        if key in SHRINK_KEYS and isinstance(value, (int, tuple, list)):
            value = _divide(value, div)
        else:
            value = _shrink(value, div)
        out[key] = value
    return out


def _loader(real, key, div, batch_size, **dataset):
    pipeline = _shrink(real[key]['dataset']['pipeline'], div)
    return dict(batch_size=batch_size, num_workers=0, persistent_workers=False,
                dataset=dict(dataset, pipeline=pipeline))


def _det_heads(model, heads):
    """Overrides of the class count of a detector's heads: RoI heads (a list of box heads
    for Cascade R-CNN: lists are replaced whole) or a one-stage ``bbox_head``."""
    if 'roi_head' not in model:
        return dict(bbox_head=heads)
    bbox = model['roi_head']['bbox_head']
    bbox = [dict(h, **heads) for h in bbox] if isinstance(bbox, list) else heads
    return dict(roi_head=dict(bbox_head=bbox, mask_head=heads))


def _tiny_overrides(kind, batch_size, real_path):
    """Top-level keys of the derived config of ``real_path``, a ``kind`` config
    (merged into the real config's keys by mmengine's inheritance)."""
    from mmengine.config import Config
    real = Config.fromfile(real_path).to_dict()
    if kind == 'det':  # Resize (1333, 800) -> (133, 80): the 128 px images at 80 px
        root = 'data/tiny_coco/'
        data = dict(data_root=root, metainfo=dict(classes=COCO_CLASSES))
        heads = dict(num_classes=len(COCO_CLASSES))
        evaluator = dict(ann_file=root + 'annotations/instances_val2017.json')
        return dict(
            model=dict(backbone=dict(init_cfg=None), **_det_heads(real['model'], heads)),
            train_dataloader=_loader(real, 'train_dataloader', 10, batch_size, **data),
            val_dataloader=_loader(real, 'val_dataloader', 10, 2, **data),
            val_evaluator=evaluator, test_evaluator=evaluator,
            train_cfg=dict(max_epochs=2, val_begin=NO_VAL),  # 2 images/epoch
            default_hooks=dict(logger=dict(interval=1)))
    if kind == 'seg':  # crop 512 -> 64, test Resize (2048, 512) -> (256, 64)
        data = dict(data_root='data/tiny_ade20k')
        return dict(
            model=dict(backbone=dict(init_cfg=None), data_preprocessor=dict(size=(64, 64))),
            train_dataloader=_loader(real, 'train_dataloader', 8, batch_size, **data),
            val_dataloader=_loader(real, 'val_dataloader', 8, 1, **data),
            train_cfg=dict(max_iters=2, val_begin=NO_VAL),
            default_hooks=dict(logger=dict(interval=1),
                               checkpoint=dict(interval=1)))
    # cls: RandomResizedCrop/CenterCrop 224 -> 64, ResizeEdge 256 -> 73
    data = dict(data_root='data/tiny_imagenet')
    return dict(
        optim_wrapper=dict(type='OptimWrapper'),
        train_dataloader=_loader(real, 'train_dataloader', 3.5, batch_size, **data),
        val_dataloader=_loader(real, 'val_dataloader', 3.5, 3, **data),
        train_cfg=dict(max_epochs=1, val_begin=NO_VAL),  # 6 images: 2 iterations
        default_hooks=dict(logger=dict(interval=1)))


def write_tiny_config(folder, kind, batch_size=2, real=None):
    """Write ``folder/<real name>`` inheriting ``real`` (a 'det' / 'seg' / 'cls' config
    path; default REAL_CONFIGS[kind]) with the tiny overrides; returns its path."""
    real = real or REAL_CONFIGS[kind]
    lines = [f'_base_ = {real!r}', '']
    for key, value in _tiny_overrides(kind, batch_size, real).items():
        lines.append(f'{key} = {pprint.pformat(value, sort_dicts=False)}')
    lines += ['test_dataloader = val_dataloader', '']
    path = folder / osp.basename(real)
    path.write_text('\n'.join(lines))
    return path


@pytest.fixture(scope='session')
def tiny_config():
    """``tiny_config(folder, kind, batch_size=2, real=None)``: write the tiny-data version
    of the real 'det' / 'seg' / 'cls' MSVMamba-Nano config (or of the ``real`` config of
    that kind) into ``folder``; returns its path.
    With the default batch sizes one epoch is 1 iteration ('det', 2 train images) or 2
    ('cls', 6 train images at batch size 3)."""
    return write_tiny_config
