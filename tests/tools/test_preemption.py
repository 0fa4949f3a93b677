"""Preemption-safe checkpoints (projects/msvmamba_mm/checkpoints.py) end to end.

One small ResNet classifier (the tests' tiny ImageNet config with 8-channel stages: ~2 MB
checkpoints) trains 12 iterations with a checkpoint every 3 (keeping 2), as
``tools/train.py`` subprocesses in one work dir:

1. SIGKILL while the iteration-9 checkpoint is being written (after its bytes, before the
   rename); ``--resume`` continues from iteration 6 and finishes;
2. the latest checkpoint then truncated to half: an explicit ``--resume`` of it is a
   one-line error naming it; ``--resume`` alone falls back to iteration 9, says so, and
   finishes a longer schedule.
Each restart loses at most one checkpoint interval (3 iterations). The unit tests below
cover the atomic write under a failing disk and the no-valid-checkpoint error
(tests/configs/test_configs_build.py checks that every config uses the hook). About 85 s
on a shared 2-core machine.
"""
import errno
import os
import re
import signal

import pytest

from projects.msvmamba_mm import checkpoints

INTERVAL = 3
# a KILL_AT_ITER environment variable makes the run SIGKILL itself inside the atomic write
# of that iteration's checkpoint: its bytes are in the temporary file, the rename is not done
KILL_PLUGIN = '''
import os, signal
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class KillDuringSaveHook(Hook):
    def before_save_checkpoint(self, runner, checkpoint):
        if checkpoint['meta']['iter'] == int(os.environ.get('KILL_AT_ITER', -1)):
            os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
'''
CONFIG = '''
_base_ = {base!r}
custom_imports = dict(imports=['projects.msvmamba_mm', 'kill_plugin'],
                      allow_failed_imports=False)
model = dict(backbone=dict(stem_channels=8, base_channels=8), head=dict(in_channels=64))
train_cfg = dict(max_iters=12, val_interval=100)
default_hooks = dict(checkpoint=dict(type='PreemptionSafeCheckpointHook', interval={interval},
                                     max_keep_ckpts=2))
custom_hooks = [dict(type='KillDuringSaveHook')]
'''


def _train_iters(out):
    return [int(i) for i in re.findall(r'Iter\(train\) \[\s*(\d+)/', out)]


@pytest.fixture(scope='module')
def preempt(tmp_path_factory, run_tool, workspace, tool_configs):
    """``preempt(*train.py args, env=None)`` in one work dir; returns (ToolRun, work dir)."""
    plugin_dir = tmp_path_factory.mktemp('preempt_plugin')
    (plugin_dir / 'kill_plugin.py').write_text(KILL_PLUGIN)
    config = plugin_dir / 'small_resnet_preempt.py'
    config.write_text(CONFIG.format(base=tool_configs['cls'], interval=INTERVAL))
    work_dir = workspace / 'preempt'

    def run(*args, env=None):
        env = dict(env or {}, PYTHONPATH=str(plugin_dir))
        return run_tool('train.py', config, '--work-dir', work_dir, *args, env=env), work_dir

    return run


@pytest.fixture(scope='module')
def killed_and_resumed(preempt):
    """(killed run, the work dir's state after the kill, resumed run, work dir): SIGKILL
    while saving iteration 9, then --resume."""
    killed, work_dir = preempt(env={'KILL_AT_ITER': '9'})
    state = dict(pointer=(work_dir / 'last_checkpoint').read_text(),
                 kept=sorted(p.name for p in work_dir.glob('iter_*.pth')),
                 partial=[p.name for p in work_dir.glob('.iter_9.pth.*.partial')])
    resumed, _ = preempt('--resume')
    return killed, state, resumed, work_dir


def test_kill_during_save_then_resume(killed_and_resumed):
    killed, state, resumed, work_dir = killed_and_resumed
    assert killed.rc == -signal.SIGKILL, killed.out[-3000:]
    assert _train_iters(killed.out) == list(range(1, 10))
    # the checkpoint being written exists only as a partial temporary file, and the
    # pointer still names the previous one; max_keep_ckpts=2 removed nothing yet
    assert len(state['partial']) == 1
    assert state['pointer'] == str(work_dir / 'iter_6.pth')
    assert state['kept'] == ['iter_3.pth', 'iter_6.pth']

    resumed.check()
    assert 'resumed epoch: 0, iter: 6' in resumed.out
    assert _train_iters(resumed.out) == list(range(7, 13))  # 7..9 again: one interval
    assert 'removed 1 partial checkpoint file' in resumed.out
    assert not list(work_dir.glob('.*.partial'))
    assert sorted(p.name for p in work_dir.glob('iter_*.pth')) == ['iter_12.pth', 'iter_9.pth']
    assert checkpoints.checkpoint_problem(str(work_dir / 'iter_12.pth')) is None


def test_truncated_latest_checkpoint(killed_and_resumed, preempt):
    work_dir = killed_and_resumed[-1]
    latest = work_dir / 'iter_12.pth'
    data = latest.read_bytes()
    latest.write_bytes(data[:len(data) // 2])  # as a kill or a full disk in torch.save would

    run, _ = preempt('--resume', latest)
    assert run.rc == 2, run.out[-3000:]
    assert 'Traceback' not in run.out
    error = run.out.strip().splitlines()[-1]
    assert error.startswith(f'error: --resume {latest}: not a usable checkpoint: not a '
                            'complete zip archive'), error
    assert error.endswith(f'The newest valid checkpoint before it is {work_dir / "iter_9.pth"}.')

    run, _ = preempt('--resume', '--cfg-options', 'train_cfg.max_iters=15')
    run.check()
    assert re.search(rf'the latest checkpoint {re.escape(str(latest))} .* is unusable \(not a '
                     rf'complete zip archive.*resuming from {re.escape(str(work_dir))}/iter_9\.pth',
                     run.out), run.out[-3000:]
    assert 'resumed epoch: 0, iter: 9' in run.out
    assert _train_iters(run.out) == list(range(10, 16))  # 10..12 again: one interval
    for name in ('iter_12.pth', 'iter_15.pth'):
        assert checkpoints.checkpoint_problem(str(work_dir / name)) is None


# --------------------------------------------------------------------------------------
# in-process unit tests (no training)
# --------------------------------------------------------------------------------------
def test_atomic_write_keeps_the_old_file_when_the_disk_fills(tmp_path, monkeypatch):
    target = tmp_path / 'iter_2.pth'
    target.write_bytes(b'old complete checkpoint')
    real_fdopen = os.fdopen

    class HalfDisk:
        def __init__(self, fd, mode):
            self.f = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[:len(data) // 2])
            raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(os, 'fdopen', HalfDisk)
    with pytest.raises(OSError, match='No space left'):
        checkpoints.atomic_write(str(target), b'new checkpoint ' * 1000)
    assert target.read_bytes() == b'old complete checkpoint'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['iter_2.pth']  # no partial left
    monkeypatch.undo()
    checkpoints.atomic_write(str(target), b'new')
    assert target.read_bytes() == b'new'


def _save_checkpoints(folder, steps):
    import torch
    for step in steps:
        torch.save({'meta': {'iter': step}}, folder / f'iter_{step}.pth')
    (folder / 'last_checkpoint').write_text(str(folder / f'iter_{max(steps)}.pth'))


def test_no_valid_checkpoint_is_an_error_naming_every_file(tmp_path):
    _save_checkpoints(tmp_path, [2, 4])
    assert checkpoints.choose_resume_checkpoint(str(tmp_path), 'iter_{}.pth') is None
    (tmp_path / 'iter_4.pth').write_bytes((tmp_path / 'iter_4.pth').read_bytes()[:100])
    assert checkpoints.choose_resume_checkpoint(str(tmp_path), 'iter_{}.pth') == \
        str(tmp_path / 'iter_2.pth')
    (tmp_path / 'iter_2.pth').write_bytes(b'')
    with pytest.raises(checkpoints.UnusableCheckpointError) as info:
        checkpoints.choose_resume_checkpoint(str(tmp_path), 'iter_{}.pth')
    message = str(info.value)
    assert f'{tmp_path / "iter_4.pth"}' in message and 'not a complete zip archive' in message
    assert f'{tmp_path / "iter_2.pth"} (the file is empty)' in message
    assert 'run without --resume' in message


def test_pointer_to_a_missing_or_newer_file(tmp_path):
    """A pointer naming a deleted file falls back; no pointer leaves mmengine's own
    behaviour (train from scratch); a damaged record fails its CRC."""
    assert checkpoints.choose_resume_checkpoint(str(tmp_path), 'iter_{}.pth') is None
    _save_checkpoints(tmp_path, [3, 6])
    (tmp_path / 'iter_6.pth').unlink()
    assert checkpoints.choose_resume_checkpoint(str(tmp_path), 'iter_{}.pth') == \
        str(tmp_path / 'iter_3.pth')
    data = bytearray((tmp_path / 'iter_3.pth').read_bytes())
    at = data.index(b'iter')  # inside the pickled record
    data[at:at + 4] = b'ITER'
    (tmp_path / 'iter_3.pth').write_bytes(bytes(data))
    assert 'CRC' in checkpoints.checkpoint_problem(str(tmp_path / 'iter_3.pth'))
