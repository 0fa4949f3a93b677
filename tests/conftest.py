"""Fixtures shared by the test folders that run the tools (tests/tools, tests/configs):
the tiny-datasets module, free TCP ports, a runner for ``tools/*.py`` / ``tools/*.sh`` (or
any Python script) in a given working directory, the tiny datasets of the end-to-end runs,
tiny-data versions of the real experiment configs, and the one end-to-end helper
(train -> save -> resume -> test) with its tools: in-process, scripts, launch scripts."""
import functools
import json
import os
import os.path as osp
import pickle
import pprint
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple, Tuple

import pytest
import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


# ---------------------------------------------------------------------------------------
# Running in parallel (pytest-xdist: CI runs ``pytest tests -n 2 --dist loadscope
# --no-loadscope-reorder``, which keeps each module on one worker, so a module-scoped set-up
# such as an ONNX export is made once)


def pytest_configure(config):
    """In an xdist worker, share the cores out: each of W workers gets cpus // W intra-op
    threads (at least one), and so do the tools it starts (OMP_NUM_THREADS, unless set).
    Two workers with two OpenMP threads each on two cores oversubscribe them, and spinning
    OpenMP threads then make a step many times slower."""
    workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault('OMP_NUM_THREADS', str(threads))
        torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))


# The longest modules start first, so that neither worker is left with one at the end:
# the quick start (~3 min on one worker) and the per-config end-to-end runs (~5 min, one
# module). With --no-loadscope-reorder loadscope hands modules out in collection order;
# its default order, by number of tests, would start the two-test quick start last.
LONGEST_MODULES = ('tests/tools/test_quick_start.py', 'tests/configs/test_configs_e2e.py')


@pytest.hookimpl(trylast=True)  # after pytest's own reordering by fixture
def pytest_collection_modifyitems(config, items):
    def rank(item):
        path = item.nodeid.split('::')[0]
        return LONGEST_MODULES.index(path) if path in LONGEST_MODULES else len(LONGEST_MODULES)

    items.sort(key=rank)  # stable: the order within a module is kept


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
    """The tiny-datasets module, projects/msvmamba_mm/tiny_data.py."""
    from projects.msvmamba_mm import tiny_data
    return tiny_data


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
    interpreter) in ``cwd`` and returns a ToolRun. The launch scripts (``dist_*.sh``) get a
    free ``PORT`` unless ``env`` sets one."""

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
# Tiny data, once per session
#
# The folder every end-to-end run works in (the tiny configs' data roots are relative to
# it): ``data/tiny_coco`` (2 train, 2 val images), ``data/tiny_ade20k`` (2, 2),
# ``data/tiny_imagenet`` (1 train, 1 val image per class: 3, 3), ``data/tiny_cityscapes``
# (the ADE20K images in the Cityscapes layout) and ``data/quick_start/tiny_coco`` (the
# quick-start config's data root: the same COCO files). With the tiny configs' batch sizes
# one epoch is one training step.
E2E_SPLITS = dict(coco=dict(train=2, val=2), ade20k=dict(train=2, val=2),
                  imagenet=dict(train=1, val=1))


def _make_tiny_cityscapes(ade_root: str, root: str) -> None:
    """The tiny ADE20K images and label maps in the Cityscapes layout that mmseg's
    CityscapesDataset reads: ``leftImg8bit/<split>/tiny/<name>_leftImg8bit.png`` and
    ``gtFine/<split>/tiny/<name>_gtFine_labelTrainIds.png``. ADE20K's value ``v`` (class
    ``v - 1``, 0 unlabelled) becomes train id ``v - 1`` (255 unlabelled)."""
    import numpy as np
    from PIL import Image
    for split, ade_split in (('train', 'training'), ('val', 'validation')):
        images = osp.join(ade_root, 'images', ade_split)
        for name in sorted(os.listdir(images)):
            stem = osp.splitext(name)[0]
            label = np.asarray(Image.open(osp.join(ade_root, 'annotations', ade_split,
                                                   stem + '.png')))
            train_ids = np.where(label == 0, 255, label.astype(np.int64) - 1)
            for folder, suffix, image in (
                    ('leftImg8bit', '_leftImg8bit.png', Image.open(osp.join(images, name))),
                    ('gtFine', '_gtFine_labelTrainIds.png',
                     Image.fromarray(train_ids.astype(np.uint8)))):
                path = osp.join(root, folder, split, 'tiny', stem + suffix)
                os.makedirs(osp.dirname(path), exist_ok=True)
                image.save(path)


@pytest.fixture(scope='session')
def e2e_root(tmp_path_factory, tiny):
    """The folder (outside the checkout) with the tiny datasets of the end-to-end runs."""
    root = tmp_path_factory.mktemp('e2e')
    data = root / 'data'
    for fmt, splits in E2E_SPLITS.items():
        folder, make = tiny.MAKERS[fmt]
        make(str(data / folder), splits=splits)
    _make_tiny_cityscapes(str(data / 'tiny_ade20k'), str(data / 'tiny_cityscapes'))
    (data / 'quick_start').mkdir()
    (data / 'quick_start' / 'tiny_coco').symlink_to(data / 'tiny_coco')
    return root


# ---------------------------------------------------------------------------------------
# Tiny-data versions of the real experiment configs.
#
# Each derived config ``_base_``s the REAL config (model, optimizer, schedulers, train
# loop, hooks, custom_imports, the pipelines' transforms) and overrides only what a tiny CPU
# run needs: data roots (and the COCO class names / detection class count of the 3-class
# shapes data), image scales in the pipelines (divided by a constant), batch size,
# ``num_workers=0``, ONE epoch or iteration (one training step on the tiny data),
# a checkpoint and a log line every step, no validation during training (tools/test.py
# evaluates instead), ``init_cfg=None`` for the ImageNet-pretrained backbones, and for
# classification ``OptimWrapper`` instead of the GPU-only ``AmpOptimWrapper``. Data roots
# are relative: run the tools in ``e2e_root`` (or a folder with the same ``data/``).

REAL_CONFIGS = {
    'det': osp.join(REPO, 'configs', 'mask_rcnn_msvmamba_n_1x.py'),
    'seg': osp.join(REPO, 'configs', 'upernet_msvmamba_n_160k_ade20k.py'),
    'cls': osp.join(REPO, 'configs', 'msvmamba_n_in1k.py'),
}
COCO_CLASSES = ('circle', 'square', 'triangle')  # the tiny datasets' default kinds
NO_VAL = 10**6  # val_begin past the end: no validation while training
SHRINK_KEYS = ('scale', 'scales', 'crop_size', 'img_scale')
# image scales divided by: det Resize (1333, 800) -> (133, 80), the 128 px images at 80 px;
# seg crop 512 -> 64, test Resize (2048, 512) -> (256, 64); cls crop 224 -> 64
SHRINK = {'det': 10, 'seg': 8, 'cls': 3.5}
BATCH_SIZE = {'det': 2, 'seg': 2, 'cls': 3}  # all E2E_SPLITS train images: one step
SEG_DATA_ROOTS = {'ADE20KDataset': 'data/tiny_ade20k',
                  'CityscapesDataset': 'data/tiny_cityscapes'}


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


def _tiny_overrides(kind, batch_size, real_path, div):
    """Top-level keys of the derived config of ``real_path``, a ``kind`` config
    (merged into the real config's keys by mmengine's inheritance)."""
    from mmengine.config import Config
    real = Config.fromfile(real_path).to_dict()
    unit = 'epochs' if 'max_epochs' in real['train_cfg'] else 'iters'
    common = dict(train_cfg={f'max_{unit}': 1, 'val_begin': NO_VAL},
                  default_hooks=dict(logger=dict(interval=1), checkpoint=dict(interval=1)))
    if kind == 'det':
        root = 'data/tiny_coco/'
        data = dict(data_root=root, metainfo=dict(classes=COCO_CLASSES))
        heads = dict(num_classes=len(COCO_CLASSES))
        evaluator = dict(ann_file=root + 'annotations/instances_val2017.json')
        return dict(
            common,
            model=dict(backbone=dict(init_cfg=None), **_det_heads(real['model'], heads)),
            train_dataloader=_loader(real, 'train_dataloader', div, batch_size, **data),
            val_dataloader=_loader(real, 'val_dataloader', div, 2, **data),
            val_evaluator=evaluator, test_evaluator=evaluator)
    if kind == 'seg':
        size = _divide(real['model']['data_preprocessor']['size'], div)
        dataset = real['train_dataloader']['dataset']['type']
        data = dict(data_root=SEG_DATA_ROOTS[dataset])
        return dict(
            common,
            model=dict(backbone=dict(init_cfg=None), data_preprocessor=dict(size=size)),
            train_dataloader=_loader(real, 'train_dataloader', div, batch_size, **data),
            val_dataloader=_loader(real, 'val_dataloader', div, 1, **data))
    data = dict(data_root='data/tiny_imagenet')
    return dict(
        common,
        optim_wrapper=dict(type='OptimWrapper'),
        train_dataloader=_loader(real, 'train_dataloader', div, batch_size, **data),
        val_dataloader=_loader(real, 'val_dataloader', div, 3, **data))


def write_tiny_config(folder, kind, real=None, batch_size=None, shrink=None):
    """Write ``folder/<real name>`` inheriting ``real`` (a 'det' / 'seg' / 'cls' config
    path; default REAL_CONFIGS[kind]) with the tiny overrides; returns its path.
    ``batch_size`` (default BATCH_SIZE[kind]) and ``shrink``, what image scales are
    divided by (default SHRINK[kind]), are per kind."""
    real = str(real or REAL_CONFIGS[kind])
    overrides = _tiny_overrides(kind, batch_size or BATCH_SIZE[kind], real,
                                shrink or SHRINK[kind])
    lines = [f'_base_ = {real!r}', '']
    for key, value in overrides.items():
        lines.append(f'{key} = {pprint.pformat(value, sort_dicts=False)}')
    lines += ['test_dataloader = val_dataloader', '']
    path = folder / osp.basename(real)
    path.write_text('\n'.join(lines))
    return path


@pytest.fixture(scope='session')
def tiny_config():
    """``tiny_config(folder, kind, real=None, batch_size=None, shrink=None)``: write the
    tiny-data version of the real 'det' / 'seg' / 'cls' MSVMamba-Nano config (or of the
    ``real`` config of that kind) into ``folder``; returns its path. It trains one step
    (one epoch or iteration) on the data of ``e2e_root``."""
    return write_tiny_config


# ---------------------------------------------------------------------------------------
# The end-to-end harness: train -> save -> resume -> test, with any pair of tools.
#
# Every end-to-end test goes through ``train_resume_test``; what differs is the tools:
# this checkout's tools/train.py and tools/test.py in-process (``cli.train_main`` /
# ``cli.test_main``: no interpreter start-up) or as subprocesses, the launch scripts
# (torchrun, 2 processes), or the OpenMMLab packages' own shipped tools and ``mim``.

class Tools(NamedTuple):
    """``train(config, *args)`` and ``test(config, checkpoint, *args)``: run a training /
    test tool, fail the test unless it exits 0, return its output ('' in-process)."""
    train: Callable[..., str]
    test: Callable[..., str]


def _forget_visualizers():
    """A tool run in a fresh interpreter builds its own visualizer. mmengine keeps every
    visualizer by name for the life of the process (the packages' runtimes all name theirs
    'visualizer'), so an in-process run would get the previous run's, with its save_dir
    (tools/test.py --show-dir would draw elsewhere): forget them before each run."""
    from mmengine.visualization import Visualizer
    classes = [Visualizer]
    while classes:
        cls = classes.pop()
        cls._instance_dict.clear()
        classes.extend(cls.__subclasses__())


def _in_process(main):
    def run(*args):
        _forget_visualizers()
        status = main([str(a) for a in args])
        assert status == 0, f'{main.__name__}({list(map(str, args))}) returned {status}'
        return ''
    return run


@pytest.fixture(scope='module', autouse=True)
def _default_scope_kept_in_its_module():
    """mmengine's registries build in the scope of the newest DefaultScope of the
    process, and every Runner creates one that outlives it. Under pytest-xdist the modules
    a worker runs before another vary from run to run, so a Runner built for an mmseg
    config in one module made an unscoped mmpretrain build of the next fail, in some runs
    only. The scopes a module created are forgotten when it ends."""
    from mmengine.registry import DefaultScope
    before = set(DefaultScope._instance_dict)
    yield
    for name in set(DefaultScope._instance_dict) - before:
        del DefaultScope._instance_dict[name]


@pytest.fixture(scope='session', autouse=True)
def _installed_packages_looked_up_once():
    """mmengine resolves every ``mmdet::...`` base of a config by asking pkg_resources
    whether the package is installed (a reload of pkg_resources per question) and by
    reading all the YAML metafiles of the package's model index (1700 files for one
    classification run): about 2 s per Config.fromfile of one of our configs on a 2-core
    machine. The installed packages do not change during a session, so in this process
    each answer is looked up once and each file parsed once (mmengine only reads them)."""
    from mmengine.config import config, utils
    saved = config.is_installed, config.get_installed_path, utils.load
    config.is_installed = functools.lru_cache(maxsize=None)(config.is_installed)
    config.get_installed_path = functools.lru_cache(maxsize=None)(config.get_installed_path)
    parsed = {}

    def load_once(path, *args, **kwargs):
        if args or kwargs or not isinstance(path, str):
            return saved[2](path, *args, **kwargs)
        if path not in parsed:
            parsed[path] = saved[2](path)
        return parsed[path]

    utils.load = load_once
    yield
    config.is_installed, config.get_installed_path, utils.load = saved


@pytest.fixture(scope='session')
def in_process_tools():
    """tools/train.py and tools/test.py in this process (what they call: cli.*_main)."""
    from projects.msvmamba_mm import cli
    return Tools(_in_process(cli.train_main), _in_process(cli.test_main))


@pytest.fixture(scope='session')
def script_tools(tool_runner):
    """``script_tools(cwd, train='train.py', test='test.py', nproc=None)``: Tools running
    ``tools/<train>`` and ``tools/<test>`` as subprocesses in ``cwd``; with ``nproc`` the
    launch scripts (``dist_train.sh CONFIG NPROC ...``)."""

    def make(cwd, train='train.py', test='test.py', nproc=None):
        run = tool_runner(cwd)
        procs = [nproc] if nproc else []

        def train_run(config, *args):
            return run(train, config, *procs, *args).check().out

        def test_run(config, checkpoint, *args):
            return run(test, config, checkpoint, *procs, *args).check().out

        return Tools(train_run, test_run)

    return make


# what tools/test.py must log, and their range (-1: COCO's "no such objects")
TEST_METRICS = {'det': ('coco/bbox_mAP', 'coco/bbox_mAP_50'), 'seg': ('aAcc', 'mIoU', 'mAcc'),
                'cls': ('accuracy/top1', 'accuracy/top5')}
METRIC_MAX = {'det': 1, 'seg': 100, 'cls': 100}


class E2ERun(NamedTuple):
    """What ``train_resume_test`` did: the checkpoints after step 1 and step 2 (paths and
    their content), the test run's work dir and logged ``metrics``, and the tools'
    ``outputs`` (train, resume, test; '' in-process)."""
    first_path: Path
    last_path: Path
    first: dict
    last: dict
    test_dir: Path
    metrics: dict
    outputs: Tuple[str, str, str]

    def test_log(self) -> str:
        """The test run's text log (``<test_dir>/<timestamp>/<timestamp>.log``: mmengine
        writes the config it ran there too)."""
        logs = sorted(self.test_dir.glob('*/*.log'))
        assert logs, f'no log under {self.test_dir}'
        return logs[-1].read_text()


def _latest_checkpoint(work_dir: Path) -> Path:
    """The checkpoint mmengine's CheckpointHook recorded last in ``work_dir``."""
    pointer = work_dir / 'last_checkpoint'
    assert pointer.is_file(), f'no checkpoint was saved in {work_dir}'
    return Path(pointer.read_text().strip())


def logged_metrics(work_dir: Path) -> dict:
    """The metrics a test run logged (mmengine's LoggerHook writes them to
    ``<work_dir>/<timestamp>/<timestamp>.json``)."""
    logs = sorted(work_dir.glob('*/*.json'))
    assert logs, f'no metrics json under {work_dir}'
    return json.loads(logs[-1].read_text())


def train_resume_test(tools: Tools, config, folder: Path, kind: str, *, resume='path',
                      train_args=(), test_args=()) -> E2ERun:
    """With ``tools``, a (train, test) pair as in :class:`Tools`: train ``config`` (a tiny
    config: one step) into ``folder/train``; resume from its checkpoint for a second step
    (``resume='path'``: ``--resume CKPT`` into ``folder/resume``; ``'auto'``: ``--resume``
    in the same work dir; None: no resume, the first checkpoint is tested); test the last
    checkpoint into ``folder/test``. Checks: one step, then the second only, from the
    first's model and AdamW state; the same weights saved; ``TEST_METRICS[kind]`` logged,
    in range. ``train_args`` go to both training runs (a ``--cfg-options`` group last),
    ``test_args`` to the test run."""
    train, test = tools
    train_dir = folder / 'train'
    train_out = train(config, '--work-dir', train_dir, *train_args)
    first_path = _latest_checkpoint(train_dir)
    unit, done = re.fullmatch(r'(epoch|iter)_(\d+)\.pth', first_path.name).groups()
    first = torch.load(first_path, mmap=True)
    assert done == '1' and first['meta']['iter'] == 1, (first_path, first['meta'])

    if resume is None:
        return _test(test, config, first_path, first, first_path, first, folder, kind,
                     test_args, (train_out, ''))
    resume_dir = train_dir if resume == 'auto' else folder / 'resume'
    resume_args = ['--resume'] + ([] if resume == 'auto' else [first_path])
    options = list(train_args)
    if '--cfg-options' not in options:
        options.append('--cfg-options')
    options.append(f'train_cfg.max_{unit}s=2')
    resume_out = train(config, '--work-dir', resume_dir, *resume_args, *options)
    last_path = _latest_checkpoint(resume_dir)
    assert last_path.name == f'{unit}_2.pth', last_path
    if resume != 'auto':  # only the step after the checkpoint ran
        assert not (resume_dir / first_path.name).exists()
    last = torch.load(last_path, mmap=True)
    assert last['meta']['iter'] == 2
    assert list(last['state_dict']) == list(first['state_dict'])
    # AdamW counts its steps per parameter: each went on from its state after step 1
    before, after = first['optimizer']['state'], last['optimizer']['state']
    assert before and {k: float(s['step']) + 1 for k, s in before.items()} == {
        k: float(after[k]['step']) for k in before}

    return _test(test, config, first_path, first, last_path, last, folder, kind, test_args,
                 (train_out, resume_out))


def _test(test, config, first_path, first, last_path, last, folder, kind, test_args,
          outputs) -> E2ERun:
    test_dir = folder / 'test'
    test_out = test(config, last_path, '--work-dir', test_dir, *test_args)
    metrics = logged_metrics(test_dir)
    for key in TEST_METRICS[kind]:
        assert key in metrics, (key, metrics)
        assert metrics[key] == -1 or 0 <= metrics[key] <= METRIC_MAX[kind], (key, metrics)
    return E2ERun(first_path, last_path, first, last, test_dir, metrics,
                  (*outputs, test_out))


def check_dump_and_drawings(out: Path, show: Path, num_images: int) -> None:
    """tools/test.py's ``--out`` pickle holds one result per test image and ``--show-dir``
    one drawing per image."""
    with open(out, 'rb') as f:
        assert len(pickle.load(f)) == num_images
    drawn = [f for _, _, files in os.walk(show) for f in files if f.endswith(('.png', '.jpg'))]
    assert len(drawn) == num_images, f'{len(drawn)} images drawn in {show}'


@pytest.fixture(scope='session')
def dump_and_drawings():
    """``dump_and_drawings(out, show, num_images)``: check a tools/test.py run's ``--out``
    pickle and ``--show-dir`` drawings."""
    return check_dump_and_drawings


@pytest.fixture(scope='session')
def e2e():
    """``train_resume_test(tools, config, folder, kind, resume='path', train_args=(),
    test_args=())``, the one end-to-end helper (see there)."""
    return train_resume_test
