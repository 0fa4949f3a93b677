"""Distributed runs of mmengine's Runner on machines without a GPU (gloo backend).

mmengine 0.10.7 assumes CUDA for every launcher: ``mmengine.dist.init_dist`` calls
``torch.cuda.set_device`` before ``init_process_group``, and ``Runner.wrap_model`` builds
DDP with ``device_ids=[LOCAL_RANK]``, which torch rejects for a CPU module. The Runner
skips ``init_dist`` when a process group already exists and takes its DDP class from
``model_wrapper_cfg`` (``MODEL_WRAPPERS`` registry), so on a CPU-only machine
:func:`setup_launcher` initialises a gloo process group itself and selects
:class:`CPUCapableDDP`. With a GPU nothing changes: mmengine initialises NCCL as usual.
"""
import datetime
import os
import subprocess
from typing import Optional

import torch
import torch.distributed as torch_dist
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm
from mmengine.registry import MODEL_WRAPPERS

from .errors import UserError

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')
WRAPPER_NAME = 'CPUCapableDDP'


def _on_accelerator(module: torch.nn.Module) -> bool:
    tensor = next(module.parameters(), None)
    if tensor is None:
        tensor = next(module.buffers(), None)
    return tensor is not None and tensor.device.type != 'cpu'


@MODEL_WRAPPERS.register_module(name=WRAPPER_NAME, force=True)
class CPUCapableDDP(MMDistributedDataParallel):
    """:class:`MMDistributedDataParallel` that also wraps a module living on the CPU.

    For a CPU module it drops ``device_ids``/``output_device`` (DDP then runs the module
    where it is, gloo averages the gradients) and reverts SyncBN layers to plain BN, as
    torch's SyncBatchNorm needs a GPU to synchronise. A module on an accelerator is
    wrapped exactly like ``MMDistributedDataParallel`` does.
    """

    def __init__(self, module: torch.nn.Module, device_ids=None, **kwargs):
        if not _on_accelerator(module):
            # torch's SyncBatchNorm and mmcv's (MMSyncBN) share the class name
            if any(type(m).__name__ == 'SyncBatchNorm' for m in module.modules()):
                module = revert_sync_batchnorm(module)
                print_log('CPUCapableDDP: the model is on the CPU, its SyncBN layers run '
                          'as BN (SyncBatchNorm needs a GPU)', logger='current')
            device_ids = None
            kwargs.pop('output_device', None)
        super().__init__(module=module, device_ids=device_ids, **kwargs)


def _first_slurm_host(node_list: str) -> str:
    out = subprocess.run(['scontrol', 'show', 'hostnames', node_list],
                         capture_output=True, text=True, check=False).stdout.split()
    if not out:
        raise UserError(f'cannot resolve the first host of SLURM_NODELIST={node_list!r} '
                        '(is scontrol on PATH?); set MASTER_ADDR')
    return out[0]


def export_rank_env(launcher: str) -> None:
    """Fill RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* for ``init_process_group('env://')``
    from what the launcher provides (the variables mmengine's init_dist reads)."""
    env = os.environ
    if launcher == 'pytorch':
        missing = [k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
                   if k not in env]
        if missing:
            raise UserError(f'--launcher pytorch needs the environment torchrun sets '
                            f'(missing {", ".join(missing)}); start it with '
                            'tools/dist_train.sh / tools/dist_test.sh or torchrun')
        env.setdefault('LOCAL_RANK', '0')
    elif launcher == 'slurm':
        if 'SLURM_PROCID' not in env or 'SLURM_NTASKS' not in env:
            raise UserError('--launcher slurm needs SLURM_PROCID/SLURM_NTASKS; start it '
                            'with srun (tools/slurm_train.sh / tools/slurm_test.sh)')
        env.setdefault('MASTER_PORT', '29500')
        if 'MASTER_ADDR' not in env:
            env['MASTER_ADDR'] = _first_slurm_host(env['SLURM_NODELIST'])
        env['WORLD_SIZE'] = env['SLURM_NTASKS']
        env['RANK'] = env['SLURM_PROCID']
        env['LOCAL_RANK'] = env.get('SLURM_LOCALID', '0')
    elif launcher == 'mpi':
        if 'OMPI_COMM_WORLD_RANK' not in env:
            raise UserError('--launcher mpi needs OMPI_COMM_WORLD_RANK/SIZE; start it '
                            'with mpirun')
        if 'MASTER_ADDR' not in env:
            raise UserError('--launcher mpi needs MASTER_ADDR in the environment')
        env.setdefault('MASTER_PORT', '29500')
        env['WORLD_SIZE'] = env['OMPI_COMM_WORLD_SIZE']
        env['RANK'] = env['OMPI_COMM_WORLD_RANK']
        env['LOCAL_RANK'] = env.get('OMPI_COMM_WORLD_LOCAL_RANK', '0')


def init_cpu_process_group(launcher: str, timeout_s: Optional[float] = None) -> None:
    """Initialise a gloo process group for ``launcher`` (pytorch, slurm or mpi)."""
    export_rank_env(launcher)
    kwargs = {}
    if timeout_s is not None:
        kwargs['timeout'] = datetime.timedelta(seconds=timeout_s)
    torch_dist.init_process_group(backend='gloo', init_method='env://', **kwargs)


def has_accelerator() -> bool:
    """Whether mmengine would put the model on an accelerator (cuda, npu, mlu, musa)."""
    from mmengine.device import get_device
    return get_device() != 'cpu'


def cpu_run_message(world_size: int, local_size: int, cores: Optional[int]) -> str:
    """What a distributed run without an accelerator tells the user (rank 0)."""
    text = (f'no GPU found: the {world_size} processes run on the CPU and synchronise over '
            'gloo (the GPUS argument of dist_train.sh / dist_test.sh is the number of '
            'processes per machine)')
    if cores and local_size > cores:
        text += (f'. WARNING: {local_size} processes on this machine but only {cores} CPU '
                 f'cores: it works, but the processes share the cores (slow); use at most '
                 f'{cores} and OMP_NUM_THREADS=1')
    return text


def _report_cpu_run(launcher: str) -> None:
    env = os.environ
    if int(env.get('RANK', '0')) != 0:
        return
    world = int(env.get('WORLD_SIZE', '1'))
    local = int(env.get('LOCAL_WORLD_SIZE', world if launcher == 'pytorch' else 1))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else None
    print_log(cpu_run_message(world, local, cores or os.cpu_count()), logger='current',
              level=30 if cores and local > cores else 20)


def setup_launcher(cfg, launcher: str) -> None:
    """Record ``launcher`` in ``cfg`` and, on a machine without an accelerator, make a
    distributed run work on gloo (process group, DDP wrapper, SyncBN -> BN)."""
    if launcher not in LAUNCHERS:
        raise UserError(f'unknown launcher {launcher!r}; known: {", ".join(LAUNCHERS)}')
    cfg.launcher = launcher
    if launcher == 'none':
        return
    if has_accelerator():
        # mmengine's own path (init_dist + MMDistributedDataParallel); only check the
        # launcher's environment so that a wrong start fails with a clear message
        if launcher == 'pytorch':
            export_rank_env(launcher)
        return
    env_cfg = cfg.setdefault('env_cfg', {})
    dist_cfg = env_cfg.setdefault('dist_cfg', {})
    dist_cfg['backend'] = 'gloo'
    if not torch_dist.is_initialized():
        init_cpu_process_group(launcher, dist_cfg.get('timeout'))
    _report_cpu_run(launcher)
    wrapper = cfg.get('model_wrapper_cfg') or {}
    if wrapper.get('type', 'MMDistributedDataParallel') in (
            'MMDistributedDataParallel', MMDistributedDataParallel):
        wrapper['type'] = WRAPPER_NAME
        wrapper.setdefault('broadcast_buffers', False)
        wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
        cfg.model_wrapper_cfg = wrapper


def shutdown() -> None:
    """Destroy the default process group, if any (torch warns about leaked groups)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
