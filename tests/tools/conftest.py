"""Fixtures for the tests of tools/: tiny datasets on disk, a runner for the tools as
subprocesses, and session-wide training runs that several tests reuse (each run costs
seconds of CPU, so every model is trained once)."""
import importlib.util
import os
import os.path as osp
import socket
import subprocess
import sys
import time

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG_DIR = osp.join(REPO, 'tests', 'tools', 'configs')
CONFIGS = {
    'det': osp.join(CONFIG_DIR, 'mask-rcnn_r18_tiny-coco.py'),
    'seg': osp.join(CONFIG_DIR, 'upernet_r18_tiny-ade20k.py'),
    'cls': osp.join(CONFIG_DIR, 'resnet18_tiny-imagenet.py'),
}


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
def tool_configs():
    """{'det'|'seg'|'cls': path of the test config}."""
    return dict(CONFIGS)


class ToolRun:
    """A finished tool run: ``rc``, ``out`` (stdout + stderr), ``seconds``."""

    def __init__(self, cmd, proc, seconds):
        self.cmd, self.rc, self.out, self.seconds = cmd, proc.returncode, proc.stdout, seconds

    def check(self) -> 'ToolRun':
        assert self.rc == 0, (f'{" ".join(self.cmd)} exited {self.rc} after '
                              f'{self.seconds:.0f}s:\n{self.out[-6000:]}')
        return self


@pytest.fixture(scope='session')
def tiny():
    """The module tools/dataset_converters/make_tiny_datasets.py."""
    return _load_tiny_datasets_module()


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
def run_tool(workspace):
    """``run_tool(script, *args, env=None, timeout=300)``: run ``tools/<script>`` (a .py
    with this interpreter, a .sh with bash) in the workspace; returns a ToolRun."""

    def run(script, *args, env=None, timeout=300):
        path = osp.join(REPO, 'tools', script)
        cmd = ([sys.executable, path] if script.endswith('.py') else ['bash', path])
        cmd += [str(a) for a in args]
        full_env = dict(os.environ, PYTHON=sys.executable, PYTHONUNBUFFERED='1')
        # one OpenMP thread per process: on 2 cores shared with other work, 2 spinning
        # threads made a ResNet-18 step 20x slower
        full_env.setdefault('OMP_NUM_THREADS', '1')
        full_env.update(env or {})
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=str(workspace), env=full_env, timeout=timeout,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return ToolRun(cmd, proc, time.time() - t0)

    return run


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
                run = run_tool('dist_train.sh', CONFIGS[kind], 2, '--work-dir', work_dir,
                               env=dict(PORT=str(_free_port())))
            else:
                run = run_tool('train.py', CONFIGS[kind], '--work-dir', work_dir)
            done[kind] = (work_dir, run.check())
        return done[kind]

    return get
