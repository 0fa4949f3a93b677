"""Fixtures shared by the test folders that run the tools as subprocesses
(tests/tools, tests/configs): the tiny-datasets module, free TCP ports, and a runner
for ``tools/*.py`` / ``tools/*.sh`` in a given working directory."""
import importlib.util
import os
import os.path as osp
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
    ``tools/<script>`` (a .py with this interpreter, a .sh with bash) in ``cwd`` and
    returns a ToolRun. The launch scripts (``dist_*.sh``) get a free ``PORT`` unless
    ``env`` sets one."""

    def runner(cwd):
        def run(script, *args, env=None, timeout=300):
            path = osp.join(REPO, 'tools', script)
            cmd = ([sys.executable, path] if script.endswith('.py') else ['bash', path])
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
