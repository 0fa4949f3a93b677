"""Fixtures for the tests of tools/: the stock ResNet-18 test configs (./configs) and a
folder with their tiny datasets, and a runner for the tools as subprocesses in it. The
end-to-end runs (train -> resume -> test) go through the ``e2e`` helper of
tests/conftest.py."""
import os.path as osp

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG_DIR = osp.join(REPO, 'tests', 'tools', 'configs')
CONFIGS = {
    'det': osp.join(CONFIG_DIR, 'mask-rcnn_r18_tiny-coco.py'),
    'seg': osp.join(CONFIG_DIR, 'upernet_r18_tiny-ade20k.py'),
    'cls': osp.join(CONFIG_DIR, 'resnet18_tiny-imagenet.py'),
}
# `tiny`, `free_port`, `tool_runner` (the subprocess runner), `e2e`: tests/conftest.py


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
