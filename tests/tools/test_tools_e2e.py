"""The scripts end to end on the CPU, as subprocesses, through the one end-to-end helper
(``e2e``, tests/conftest.py) on the tiny MSVMamba-Nano configs: tools/train.py and
tools/test.py; the launch scripts with 2 processes (the one distributed test); slurm_test.sh.
Every config's train -> resume -> test runs in-process in tests/configs/test_configs_e2e.py;
the packages' own tools and mim in test_ecosystem_tools.py."""
import os
import pickle
import re
import stat

import pytest

VAL_METRIC = {'det': 'coco/segm_mAP', 'seg': 'mIoU', 'cls': 'accuracy/top1'}


def _train_epochs(out):
    """Epochs whose training iterations mmengine's LoggerHook logged."""
    return [int(i) for i in re.findall(r'Epoch\(train\) \[(\d+)\]\[', out)]


@pytest.fixture(scope='module')
def scripts_run(e2e_root, tmp_path_factory, tiny_config, script_tools, e2e):
    """(folder, config, E2ERun) of Mask R-CNN-Nano (its real depths) through tools/train.py
    (validating after each epoch; ``--resume CKPT``) and tools/test.py with --out and
    --show-dir and --amp (backbone + neck in bf16 on the CPU)."""
    folder = tmp_path_factory.mktemp('scripts_e2e')
    config = tiny_config(folder, 'det')
    run = e2e(script_tools(e2e_root), config, folder, 'det',
              train_args=['--cfg-options', 'train_cfg.val_begin=1'],
              test_args=['--out', folder / 'results.pkl', '--show-dir', folder / 'show',
                         '--amp'])
    return folder, config, run


def test_train_resume_and_test_scripts(scripts_run, dump_and_drawings):
    folder, _, run = scripts_run
    train, resume, test = run.outputs
    assert _train_epochs(train) == [1] and VAL_METRIC['det'] in train
    assert 'resumed epoch: 1, iter: 1' in resume
    assert _train_epochs(resume) == [2] and VAL_METRIC['det'] in resume
    assert run.last['meta']['epoch'] == 2
    # message hub: 0-based index of the last iteration / epoch run
    assert (run.last['message_hub']['runtime_info']['iter'],
            run.last['message_hub']['runtime_info']['epoch']) == (1, 1)
    assert VAL_METRIC['det'] in test
    assert '--amp: backbone + neck under autocast (torch.bfloat16 on cpu)' in test
    dump_and_drawings(folder / 'results.pkl', folder / 'show', num_images=2)


def test_launch_scripts_two_processes(e2e_root, tmp_path, tiny_config, script_tools, e2e):
    """tools/dist_train.sh and tools/dist_test.sh with 2 processes (torchrun, gloo): the
    one distributed test. UperNet-Nano: the CPU DDP wrapper; its SyncBN layers run as BN;
    parameters and gradients share one layout (DDP copies no gradient into its buckets);
    the checkpoints hold the bare model (no DDP prefix); dist_test gathers both ranks'
    results in dataset order."""
    config = tiny_config(tmp_path, 'seg')
    out = tmp_path / 'results.pkl'
    tools = script_tools(e2e_root, 'dist_train.sh', 'dist_test.sh', nproc=2)
    run = e2e(tools, config, tmp_path, 'seg', resume='auto', test_args=['--out', out])
    train, resume, test = run.outputs
    for output in run.outputs:
        assert 'Distributed training: True' in output and 'GPU number: 2' in output
        assert "'backend': 'gloo'" in output
    for output in (train, resume):
        assert "type='CPUCapableDDP'" in output and 'its SyncBN layers run as BN' in output
        assert 'Grad strides do not match bucket view strides' not in output
    assert 'resumed epoch: 0, iter: 1' in resume
    assert not any(k.startswith('module.') for k in run.last['state_dict'])
    assert any(k.startswith('decode_head.') for k in run.last['state_dict'])
    with open(out, 'rb') as f:  # 2 val images, one per rank, gathered over gloo
        tested = [os.path.basename(r['img_path']) for r in pickle.load(f)]
    assert tested == sorted(os.listdir(e2e_root / 'data/tiny_ade20k/images/validation'))


def test_slurm_test_sh_runs_test_py(scripts_run, tool_runner, free_port, e2e_root, tmp_path):
    """slurm_test.sh (launcher slurm, gloo) with a stand-in `srun` that runs its command
    as task 0 of 1, on the checkpoint of the scripts' run."""
    _, config, run = scripts_run
    srun = tmp_path / 'bin' / 'srun'
    srun.parent.mkdir()
    srun.write_text(
        '#!/usr/bin/env bash\n'
        'echo "srun $*" > "$SRUN_LOG"\n'
        # drop srun's own options (only -p takes its value as a separate word)
        'while [[ "$1" == -* ]]; do [[ "$1" == -p ]] && shift; shift; done\n'
        'SLURM_PROCID=0 SLURM_NTASKS=1 SLURM_LOCALID=0 SLURM_NODELIST=localhost '
        'MASTER_ADDR=127.0.0.1 exec "$@"\n')
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / 'srun.log'
    slurm = tool_runner(e2e_root)(
        'slurm_test.sh', 'part1', 'job1', config, run.last_path,
        '--work-dir', tmp_path / 'slurm_test',
        env=dict(PATH=f'{srun.parent}:{os.environ["PATH"]}', SRUN_LOG=str(log),
                 MASTER_PORT=str(free_port), GPUS='1', GPUS_PER_NODE='1',
                 SRUN_ARGS='--quotatype=auto')).check()
    assert VAL_METRIC['det'] in slurm.out
    assert 'Distributed launcher: slurm' in slurm.out and "'backend': 'gloo'" in slurm.out
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
