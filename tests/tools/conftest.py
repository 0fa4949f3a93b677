"""Fixtures for the tests of tools/: tiny datasets on disk, a runner for the tools as
subprocesses, and session-wide training runs that several tests reuse (each run costs
seconds of CPU, so every model is trained once)."""
import os.path as osp

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG_DIR = osp.join(REPO, 'tests', 'tools', 'configs')
CONFIGS = {
    'det': osp.join(CONFIG_DIR, 'mask-rcnn_r18_tiny-coco.py'),
    'seg': osp.join(CONFIG_DIR, 'upernet_r18_tiny-ade20k.py'),
    'cls': osp.join(CONFIG_DIR, 'resnet18_tiny-imagenet.py'),
}
# `tiny`, `free_port` and `tool_runner` (the subprocess runner): tests/conftest.py


@pytest.fixture(scope='session')
def tool_configs():
    """{'det'|'seg'|'cls': path of the test config}."""
    return dict(CONFIGS)


@pytest.fixture(scope='session')
def workspace(tmp_path_factory, tiny):
    """Folder the tools run in: ``data/tiny_{coco,ade20k,imagenet}`` (the data roots of
    the test configs, relative to the working directory)."""
    root = tmp_path_factory.mktemp('tools_ws')
    tiny.make_coco(str(root / 'data' / 'tiny_coco'), splits=dict(train=4, val=2))
    tiny.make_ade20k(str(root / 'data' / 'tiny_ade20k'), splits=dict(train=4, val=2))
    tiny.make_imagenet(str(root / 'data' / 'tiny_imagenet'), splits=dict(train=4, val=2))
    return root


@pytest.fixture(scope='session')
def run_tool(workspace, tool_runner):
    """``run_tool(script, *args, env=None, timeout=300)``: run ``tools/<script>`` (a .py
    with this interpreter, a .sh with bash) in the workspace; returns a ToolRun."""
    return tool_runner(workspace)


# trained by tools/dist_train.sh with 2 processes (gloo): the distributed path on a CPU,
# with the SyncBN layers of the UperNet, at the cost of one run
DIST_KINDS = {'seg'}


@pytest.fixture(scope='session')
def trained(run_tool, workspace):
    """``trained(kind)``: (work dir, ToolRun) of a 2-iteration training run of
    CONFIGS[kind] (checkpoints iter_1.pth and iter_2.pth), run once per session:
    ``tools/train.py``, or ``tools/dist_train.sh CONFIG 2`` for DIST_KINDS."""
    done = {}

    def get(kind):
        if kind not in done:
            work_dir = workspace / f'train_{kind}'
            if kind in DIST_KINDS:
                # tool_runner gives the launch script a free PORT
                run = run_tool('dist_train.sh', CONFIGS[kind], 2, '--work-dir', work_dir)
            else:
                run = run_tool('train.py', CONFIGS[kind], '--work-dir', work_dir)
            done[kind] = (work_dir, run.check())
        return done[kind]

    return get
