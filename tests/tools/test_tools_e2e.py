"""tools/train.py, tools/test.py and the launch scripts end to end on the CPU, as
subprocesses, with stock mmdet / mmseg / mmpretrain models on tiny on-disk datasets.

Every training run is 2 iterations with one validation; the session fixture `trained`
trains each model once (the UperNet with tools/dist_train.sh, 2 processes) and the tests
below share those runs."""
import os
import pickle
import re
import shutil
import stat

import pytest
import torch

import projects.msvmamba_mm  # noqa: F401  (torch.load of mmengine checkpoints)

KINDS = ('det', 'seg', 'cls')
VAL_METRIC = {'det': 'coco/segm_mAP', 'seg': 'mIoU', 'cls': 'accuracy/top1'}


def _train_iters(out):
    """Training iterations logged by mmengine's LoggerHook ('Iter(train) [i/n]')."""
    return [int(i) for i in re.findall(r'Iter\(train\) \[\s*(\d+)/', out)]


@pytest.mark.parametrize('kind', KINDS)
def test_train_saves_checkpoints_and_validates(trained, kind):
    work_dir, run = trained(kind)
    assert _train_iters(run.out) == [1, 2]
    assert VAL_METRIC[kind] in run.out
    for name in ('iter_1.pth', 'iter_2.pth', 'last_checkpoint'):
        assert (work_dir / name).is_file(), name
    ckpt = torch.load(work_dir / 'iter_2.pth')
    assert ckpt['meta']['iter'] == 2


@pytest.mark.parametrize('kind', KINDS)
def test_resume_continues_with_optimizer_and_scheduler_state(trained, run_tool, workspace,
                                                             kind, tool_configs):
    work_dir, _ = trained(kind)
    resume_dir = workspace / f'resume_{kind}'
    if kind == 'cls':  # `--resume` alone: the latest checkpoint recorded in the work dir
        resume_dir.mkdir()
        shutil.copy(work_dir / 'iter_1.pth', resume_dir)
        (resume_dir / 'last_checkpoint').write_text(str(resume_dir / 'iter_1.pth'))
        args = ['--resume']
    else:
        args = ['--resume', work_dir / 'iter_1.pth']
    run = run_tool('train.py', tool_configs[kind], '--work-dir', resume_dir,
                   *args).check()
    assert 'resumed epoch: 0, iter: 1' in run.out
    assert _train_iters(run.out) == [2]  # only the iteration after the checkpoint
    reference = torch.load(work_dir / 'iter_2.pth')
    resumed = torch.load(resume_dir / 'iter_2.pth')
    assert resumed['meta']['iter'] == 2
    assert resumed['param_schedulers'] == reference['param_schedulers']
    groups = resumed['optimizer']['param_groups']
    assert [g['lr'] for g in groups] == [g['lr'] for g in reference['optimizer']['param_groups']]
    steps = {float(s['step']) for s in resumed['optimizer']['state'].values()}
    assert steps == {2.0}  # AdamW state carried over from iteration 1


def _check_dump_and_drawings(out, show, num_images):
    with open(out, 'rb') as f:
        assert len(pickle.load(f)) == num_images
    drawn = [f for _, _, files in os.walk(show) for f in files
             if f.endswith(('.png', '.jpg'))]
    assert len(drawn) == num_images, f'{len(drawn)} images drawn in {show}'


@pytest.mark.parametrize('kind,tta', [('det', False), ('seg', True)])
def test_test_tool_evaluates_dumps_and_draws(trained, run_tool, workspace, tool_configs,
                                            kind, tta):
    work_dir, _ = trained(kind)
    out, show = workspace / f'{kind}_results.pkl', workspace / f'{kind}_show'
    run = run_tool('test.py', tool_configs[kind], work_dir / 'iter_2.pth',
                   '--work-dir', workspace / f'test_{kind}', '--out', out,
                   '--show-dir', show, *(['--tta'] if tta else [])).check()
    assert VAL_METRIC[kind] in run.out
    if tta:  # the config the Runner ran wraps the model in the config's tta_model
        assert "type='SegTTAModel'" in run.out
    _check_dump_and_drawings(out, show, num_images=2)


def test_dist_train_two_processes_on_cpu(trained):
    """tools/dist_train.sh (torchrun, 2 processes): gloo and the CPU DDP wrapper are
    chosen, the UperNet's SyncBN layers run as BN (the run itself: `trained('seg')`)."""
    _, run = trained('seg')
    assert 'Distributed training: True' in run.out and 'GPU number: 2' in run.out
    assert "'backend': 'gloo'" in run.out and "type='CPUCapableDDP'" in run.out
    assert 'its SyncBN layers run as BN' in run.out


def test_dist_test_two_processes_gathers_all_results(trained, run_tool, workspace,
                                                     tool_configs, free_port):
    work_dir, _ = trained('cls')
    out = workspace / 'cls_dist_results.pkl'
    run = run_tool('dist_test.sh', tool_configs['cls'], work_dir / 'iter_2.pth', 2,
                   '--work-dir', workspace / 'dist_test_cls', '--out', out,
                   env=dict(PORT=str(free_port))).check()
    assert 'GPU number: 2' in run.out and VAL_METRIC['cls'] in run.out
    with open(out, 'rb') as f:
        results = pickle.load(f)
    # 6 val images split over the 2 ranks, gathered (over gloo) in dataset order
    assert sorted(r['sample_idx'] for r in results) == list(range(6))


def test_slurm_test_sh_runs_test_py(trained, run_tool, workspace, free_port, tool_configs):
    """slurm_test.sh (launcher slurm, gloo) with a stand-in `srun` that runs its command
    as task 0 of 1; test.py with --out and --show-dir on the classifier."""
    work_dir, _ = trained('cls')
    bin_dir = workspace / 'fake_slurm_bin'
    bin_dir.mkdir(exist_ok=True)
    srun = bin_dir / 'srun'
    srun.write_text(
        '#!/usr/bin/env bash\n'
        'echo "srun $*" > "$SRUN_LOG"\n'
        # drop srun's own options (only -p takes its value as a separate word)
        'while [[ "$1" == -* ]]; do [[ "$1" == -p ]] && shift; shift; done\n'
        'SLURM_PROCID=0 SLURM_NTASKS=1 SLURM_LOCALID=0 SLURM_NODELIST=localhost '
        'MASTER_ADDR=127.0.0.1 exec "$@"\n')
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    log, out, show = (workspace / 'srun.log', workspace / 'cls_results.pkl',
                      workspace / 'cls_show')
    run = run_tool('slurm_test.sh', 'part1', 'job1', tool_configs['cls'],
                   work_dir / 'iter_2.pth', '--work-dir', workspace / 'slurm_test',
                   '--out', out, '--show-dir', show,
                   env=dict(PATH=f'{bin_dir}:{os.environ["PATH"]}', SRUN_LOG=str(log),
                            MASTER_PORT=str(free_port), GPUS='1', GPUS_PER_NODE='1',
                            SRUN_ARGS='--quotatype=auto')).check()
    assert VAL_METRIC['cls'] in run.out
    assert 'Distributed launcher: slurm' in run.out and "'backend': 'gloo'" in run.out
    _check_dump_and_drawings(out, show, num_images=6)
    srun_cmd = log.read_text()
    for part in ('-p part1', '--job-name=job1', '--ntasks=1', '--quotatype=auto',
                 '--launcher=slurm'):
        assert part in srun_cmd


def _assert_one_line_error(run, message):
    assert run.rc == 2, run.out
    assert 'Traceback' not in run.out
    errors = [line for line in run.out.splitlines() if line.startswith('error: ')]
    assert errors == [f'error: {message}'], run.out


def test_train_missing_config_is_a_one_line_error(run_tool):
    # more user errors, checked in-process: test_tools_runtime.py::test_tools_user_errors
    run = run_tool('train.py', 'no/such/config.py', timeout=120)
    _assert_one_line_error(run, 'config file not found: no/such/config.py')


def test_test_tool_missing_checkpoint_is_a_one_line_error(run_tool, tool_configs):
    run = run_tool('test.py', tool_configs['det'], 'no/such.pth', timeout=120)
    _assert_one_line_error(run, 'checkpoint not found: no/such.pth')
