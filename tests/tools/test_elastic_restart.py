"""Elastic restart through torchrun: ``MAX_RESTARTS=1 tools/dist_train.sh CONFIG 2``.

Two gloo processes train a small ResNet classifier (the tests' tiny ImageNet config with
8-channel stages) for 4 iterations with a checkpoint every 2. Rank 1 SIGKILLs itself after
iteration 3, once (a marker file remembers it); torchrun restarts both processes, which
resume from iter_2.pth without anyone acting (projects/msvmamba_mm/cli.py) and finish.
On the restart rank 0 starts 2 s late: with torchrun's default rendezvous the restarted
rank 1 then read the killed rank 0's address from the store and the run hung (torch 2.14);
tools/_launch.sh gives every start a store of its own. The run also passes
``--check-data``, so each process checks its half of the training images on every start.
About 45 s on a shared 2-core machine; the other tests take milliseconds.
"""
import os
import os.path as osp
import re
import subprocess

import pytest
from mmengine.config import Config

from projects.msvmamba_mm import checkpoints, cli

KILL_AT_ITER = 3
# rank 1 SIGKILLs itself after iteration KILL_AT_ITER unless the file KILL_MARKER exists
KILL_PLUGIN = '''
import os, signal
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class KillWorkerOnceHook(Hook):
    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        marker = os.environ['KILL_MARKER']
        if (runner.iter + 1 == int(os.environ['KILL_AT_ITER']) and get_rank() == 1
                and not os.path.exists(marker)):
            open(marker, 'w').close()
            os.kill(os.getpid(), signal.SIGKILL)


if os.environ.get('TORCHELASTIC_RESTART_COUNT') == '1' and os.environ.get('RANK') == '0':
    import time
    time.sleep(2)
'''
CONFIG = '''
_base_ = {base!r}
custom_imports = dict(imports=['projects.msvmamba_mm', 'kill_plugin'],
                      allow_failed_imports=False)
model = dict(backbone=dict(stem_channels=8, base_channels=8), head=dict(in_channels=64))
train_cfg = dict(max_iters=4, val_interval=100)
default_hooks = dict(checkpoint=dict(type='PreemptionSafeCheckpointHook', interval=2,
                                     max_keep_ckpts=2))
custom_hooks = [dict(type='KillWorkerOnceHook')]
'''
DIST_TRAIN = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'tools',
                      'dist_train.sh')
ITER_LINE = re.compile(r'Iter\(train\) \[\s*(\d+)/\d+\].*loss: ([\d.]+)')


def test_killed_worker_is_restarted_and_resumes(tmp_path, run_tool, workspace, tool_configs):
    (tmp_path / 'kill_plugin.py').write_text(KILL_PLUGIN)
    config = tmp_path / 'small_resnet_elastic.py'
    config.write_text(CONFIG.format(base=tool_configs['cls']))
    marker, work_dir = tmp_path / 'killed', workspace / 'elastic'
    env = dict(MAX_RESTARTS='1', PYTHONPATH=str(tmp_path), KILL_MARKER=str(marker),
               KILL_AT_ITER=str(KILL_AT_ITER))
    run = run_tool('dist_train.sh', config, 2, '--work-dir', work_dir, '--check-data',
                   env=env, timeout=240).check()

    assert marker.exists()
    assert re.search(r'exitcode: -9\) local_rank: 1', run.out), run.out[-5000:]
    first, restarted = run.out.split('torchrun restart 1: resuming from the latest '
                                     f'checkpoint in {work_dir} (--resume)')
    assert 'resumed epoch: 0, iter: 2' in restarted
    before, after = (dict(ITER_LINE.findall(part)) for part in (first, restarted))
    assert list(before) == ['1', '2', '3'], first[-3000:]
    assert list(after) == ['3', '4'], restarted[-3000:]
    assert after['3'] == before['3']  # the same weights and batch: an exact resume
    # --check-data: each process its half, on both starts. Counted over the whole output:
    # rank 1 may print its line before rank 0 logs the restart (rank 0 starts 2 s late)
    for share in (1, 2):
        assert run.out.count(f'checking 6 samples (share {share} of 2)') == 2, run.out[-5000:]
    assert checkpoints.checkpoint_problem(str(work_dir / 'iter_4.pth')) is None


def test_dist_train_sh_passes_max_restarts():
    """With PYTHON=echo the launch script prints the torchrun command it would run."""
    def launch(restarts):
        return subprocess.run(['bash', DIST_TRAIN, 'c.py', '2', '--resume'],
                              env=dict(os.environ, PYTHON='echo', MAX_RESTARTS=restarts),
                              capture_output=True, text=True, timeout=60)

    run = launch('0')  # torchrun's default rendezvous, as before MAX_RESTARTS
    assert ' --master_port=' in run.stdout and ' --max-restarts=0 ' in run.stdout
    run = launch('3')
    assert run.returncode == 0, run.stderr
    assert ' --rdzv-backend=c10d ' in run.stdout and ' --max-restarts=3 ' in run.stdout
    assert run.stdout.rstrip().endswith('c.py --resume --launcher pytorch')
    run = launch('three')
    assert run.returncode == 2
    assert run.stderr.strip() == ("error: MAX_RESTARTS must be a number of restarts "
                                  "(0, 1, ...), got 'three'")


@pytest.mark.parametrize('restart,checkpoint,resumed', [
    ('0', True, False), ('1', False, False), ('2', True, True)])
def test_restart_resumes_only_when_there_is_a_checkpoint(tmp_path, monkeypatch, restart,
                                                         checkpoint, resumed):
    monkeypatch.setenv('TORCHELASTIC_RESTART_COUNT', restart)
    if checkpoint:
        (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_2.pth'))
    cfg = Config(dict(work_dir=str(tmp_path), resume=False, load_from='pretrained.pth'))
    cli._resume_after_elastic_restart(cfg)
    assert (cfg.resume, cfg.load_from) == ((True, None) if resumed else
                                           (False, 'pretrained.pth'))
