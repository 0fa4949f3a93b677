"""Shared implementation of ``tools/train.py`` and ``tools/test.py``.

One pair of tools serves mmpretrain, mmdet and mmseg configs: the config's
``default_scope`` picks the package (see :mod:`.scopes`), mmengine's ``Runner`` does the
rest. Mistakes in what the user asked for end in a one-line ``error: ...`` on stderr and
exit status 2, not a traceback.
"""
import argparse
import os
import os.path as osp
import sys
from typing import Callable, List, Optional, Tuple

from mmengine.config import Config, ConfigDict, DictAction

from . import distributed
from .checkpoints import POINTER_NAME
from .datasets import check_dataset_paths, check_pretrained
from .errors import UserError
from .scopes import Scope, scope_of


# --------------------------------------------------------------------------------------
# arguments
# --------------------------------------------------------------------------------------
def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--work-dir', help='folder for logs and checkpoints '
                        '(default: the config\'s work_dir, else ./work_dirs/<config name>)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
        help='override config settings, e.g. train_cfg.max_iters=10 '
        "'optim_wrapper.optimizer.lr=0.01' (lists: key=[a,b] or key=a,b)")
    parser.add_argument('--launcher', choices=distributed.LAUNCHERS, default='none',
                        help='how the processes were started (none: single process)')
    # torch.distributed.launch passes --local-rank/--local_rank to every process
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0,
                        help=argparse.SUPPRESS)


def _parser(prog: str, description: str, positionals: Tuple[Tuple[str, str], ...],
            options: Tuple[Tuple[str, dict], ...]) -> argparse.ArgumentParser:
    """A parser with the ``(name, help)`` positionals, the options both tools share, then
    the tool's own ``(flag, add_argument keywords)`` options."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for name, help_text in positionals:
        parser.add_argument(name, help=help_text)
    _common_arguments(parser)
    for flag, kwargs in options:
        parser.add_argument(flag, **kwargs)
    return parser


def train_parser() -> argparse.ArgumentParser:
    return _parser('tools/train.py', 'Train a model from an mmpretrain, mmdet or mmseg config. '
                   'Exit status: 0 done; 2 a one-line error; 75 stopped by SIGTERM/SIGUSR1 '
                   'after saving the checkpoint of the iteration (run again with --resume).',
                   (('config', 'config file'), ), (
        ('--resume', dict(nargs='?', const='auto', metavar='CKPT',
                          help='resume from CKPT, or without CKPT from the latest '
                          'checkpoint in the work dir')),
        ('--amp', dict(action='store_true',
                       help='automatic mixed precision: AmpOptimWrapper (float16 with dynamic '
                       'loss scale) on a GPU, bf16 autocast without one')),
        ('--auto-scale-lr', dict(action='store_true',
                                 help='scale the learning rate by total batch size / '
                                 'auto_scale_lr.base_batch_size of the config')),
        ('--check-data', dict(action='store_true',
                              help='first decode every image and check every annotation '
                              'of the train (and val) data, as tools/misc/check_dataset.py '
                              'does; do not start on any problem')),
    ))


def test_parser() -> argparse.ArgumentParser:
    return _parser('tools/test.py',
                   'Evaluate a checkpoint with an mmpretrain, mmdet or mmseg config.',
                   (('config', 'config file'), ('checkpoint', 'checkpoint file')), (
        ('--out', dict(metavar='FILE.pkl',
                       help='also dump the predictions to this pickle file')),
        ('--show-dir', dict(metavar='DIR',
                            help='save every test image with its predictions drawn to DIR')),
        ('--tta', dict(action='store_true', help="test-time augmentation with the config's "
                       'tta_model and tta_pipeline')),
        ('--amp', dict(action='store_true',
                       help='backbone + neck under autocast: bf16 on the CPU (the fused CPU '
                       'ops stay on with avx512_bf16/AMX), float16 on a GPU; heads float32')),
    ))


# --------------------------------------------------------------------------------------
# config preparation (pure functions of cfg + args, testable without running)
# --------------------------------------------------------------------------------------
def _is_local(path: str) -> bool:
    return '://' not in path


def load_config(path: str, cfg_options: Optional[dict]) -> Config:
    if not osp.isfile(path):
        raise UserError(f'config file not found: {path}')
    try:
        cfg = Config.fromfile(path)
    except FileNotFoundError as e:  # e.g. a missing _base_ file, as mmengine words it
        raise UserError(f'cannot load config {path}: {e}') from e
    # The Runner prints the config, dumps it and stores it in every checkpoint, each time
    # formatted with yapf: about 1 s per call for a detection config on a 2-core CPU (half
    # the time of a short run). Unformatted it is the same valid Python, one key per line.
    # (mmengine's fromfile drops its own format_python_code=False for these configs.)
    object.__setattr__(cfg, '_format_python_code', False)
    if cfg_options:
        try:
            cfg.merge_from_dict(cfg_options)
        except (TypeError, KeyError) as e:  # e.g. a dict option where the base has None
            raise UserError(f'--cfg-options: {e}') from e
    return cfg


def _set_work_dir(cfg: Config, args: argparse.Namespace) -> None:
    if args.work_dir:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])


def _set_resume(cfg: Config, resume: Optional[str]) -> None:
    if resume is None:
        return
    cfg.resume = True
    if resume == 'auto':  # the Runner finds the latest checkpoint of the work dir
        cfg.load_from = None
        return
    if _is_local(resume) and not osp.isfile(resume):
        raise UserError(f'--resume: checkpoint not found: {resume}')
    cfg.load_from = resume


def _resume_after_elastic_restart(cfg: Config) -> None:
    """Under torchrun with --max-restarts (MAX_RESTARTS=N tools/dist_train.sh), a restarted
    group resumes from the work dir's latest checkpoint (the checkpoint hook falls back to
    the newest valid one) instead of starting over; with no checkpoint yet it starts as the
    first attempt did."""
    restart = os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')
    if restart in ('', '0'):
        return
    from mmengine.logging import print_log
    found = osp.isfile(osp.join(cfg.work_dir, POINTER_NAME))
    if os.environ.get('RANK', '0') == '0':
        print_log(f'torchrun restart {restart}: ' + (
            f'resuming from the latest checkpoint in {cfg.work_dir} (--resume)' if found else
            f'no checkpoint in {cfg.work_dir} yet, starting from the beginning'),
            logger='current')
    if not found:
        return
    cfg.resume = True
    cfg.load_from = None


def _set_amp(cfg: Config) -> None:
    """AmpOptimWrapper (dynamic loss scale) on a GPU/NPU/MLU/MUSA device; without one,
    bf16 autocast on the CPU (cpu_amp.CPUBf16OptimWrapper: mmengine's AmpOptimWrapper
    needs such a device, and bf16 needs no loss scale)."""
    optim_wrapper = cfg.optim_wrapper
    if distributed.has_accelerator():
        if optim_wrapper.get('type', 'OptimWrapper') != 'AmpOptimWrapper':
            optim_wrapper.type = 'AmpOptimWrapper'
            optim_wrapper.setdefault('loss_scale', 'dynamic')
        return
    dtype = str(optim_wrapper.get('dtype') or 'bfloat16').replace('torch.', '')
    if dtype != 'bfloat16':
        raise UserError(f'--amp without a GPU trains in bfloat16 on the CPU, but the config '
                        f'sets optim_wrapper.dtype={dtype}; remove it or set it to bfloat16')
    optim_wrapper.type = 'CPUBf16OptimWrapper'
    optim_wrapper.pop('loss_scale', None)  # bf16 keeps float32's range: nothing to scale
    optim_wrapper.dtype = 'bfloat16'


def _set_auto_scale_lr(cfg: Config) -> None:
    auto_scale_lr = cfg.get('auto_scale_lr')
    if not auto_scale_lr or 'base_batch_size' not in auto_scale_lr:
        raise UserError('--auto-scale-lr needs auto_scale_lr = dict(base_batch_size=N) in '
                        'the config (N: the total batch size its learning rate is for)')
    auto_scale_lr.enable = True


def _train_splits(cfg: Config) -> List[str]:
    """'train', and 'val' when the run validates."""
    return ['train'] + (['val'] if cfg.get('val_cfg') and cfg.get('val_dataloader') else [])


def _check_train_files(cfg: Config) -> None:
    """The datasets, the backbone's pretrained weights and ``load_from`` exist."""
    check_dataset_paths(cfg, [f'{split}_dataloader' for split in _train_splits(cfg)])
    check_pretrained(cfg)
    load_from = cfg.get('load_from')
    if load_from and _is_local(load_from) and not osp.isfile(load_from):
        raise UserError(f'checkpoint not found: {load_from} (load_from in the config)')


def prepare_train_config(cfg: Config, args: argparse.Namespace) -> Config:
    _set_work_dir(cfg, args)
    _set_resume(cfg, args.resume)
    _resume_after_elastic_restart(cfg)
    if args.amp:
        _set_amp(cfg)
    if args.auto_scale_lr:
        _set_auto_scale_lr(cfg)
    _check_train_files(cfg)
    return cfg


def _innermost_dataset(dataset_cfg: dict) -> dict:
    """The dataset inside wrappers (RepeatDataset, ClassBalancedDataset, ...)."""
    while 'dataset' in dataset_cfg:
        dataset_cfg = dataset_cfg['dataset']
    return dataset_cfg


def _set_tta(cfg: Config) -> None:
    missing = [k for k in ('tta_model', 'tta_pipeline') if k not in cfg]
    if missing:
        raise UserError(f'--tta needs {" and ".join(missing)} in the config')
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    _innermost_dataset(cfg.test_dataloader.dataset).pipeline = cfg.tta_pipeline


def prepare_test_config(cfg: Config, args: argparse.Namespace, scope: Scope) -> Config:
    if _is_local(args.checkpoint) and not osp.isfile(args.checkpoint):
        raise UserError(f'checkpoint not found: {args.checkpoint}')
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        raise UserError(f'--out must name a .pkl or .pickle file, got {args.out}')
    if args.show_dir and args.tta and not scope.show_dir_with_tta:
        raise UserError(f'--show-dir cannot be combined with --tta for {scope.name} configs '
                        '(its visualization hook cannot draw test-time augmented batches)')
    check_dataset_paths(cfg, ['test_dataloader'])
    _set_work_dir(cfg, args)
    cfg.load_from = args.checkpoint
    if args.show_dir:  # absolute: mmdet's hook would put a relative one under work_dir
        scope.enable_show_dir(cfg, osp.abspath(args.show_dir))
    if args.tta:
        _set_tta(cfg)
    return cfg


# --------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------
def build_runner(cfg: Config):
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def _load(args: argparse.Namespace):
    """(cfg, scope) of ``args.config``, checked before anything heavy is imported."""
    if args.launcher != 'none':
        os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = load_config(args.config, args.cfg_options)
    return cfg, scope_of(cfg, args.config)


def _start(cfg: Config, scope: Scope, launcher: str):
    """Register the package's modules, prepare the launcher and build the Runner."""
    scope.register_modules()
    distributed.setup_launcher(cfg, launcher)
    return build_runner(cfg)


def _reported_errors() -> Tuple[type, ...]:
    """The exceptions a tool reports as one line: :class:`UserError`, and the backbone
    loader's ``CheckpointError`` (a pretrained file that is damaged or does not fit is
    only read in ``init_weights``, after the checks here). The loader's module is looked
    up, not imported: if it was never loaded, nothing raised its error."""
    loader = sys.modules.get('projects.msvmamba.checkpoint')
    return (UserError,) + ((loader.CheckpointError,) if loader is not None else ())


def run_main(main: Callable[[Optional[List[str]]], None],
             argv: Optional[List[str]] = None) -> int:
    """Run a tool's ``main(argv)``: a :class:`UserError` or a checkpoint the backbone
    cannot load becomes one ``error: ...`` line on stderr and exit status 2; distributed
    state is shut down either way."""
    try:
        main(argv)
    except Exception as e:  # noqa: B902  (re-raised below unless it is one we report)
        if not isinstance(e, _reported_errors()):
            raise
        print(f'error: {e}', file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()
    return 0


def _check_data(cfg: Config, scope: Scope, launcher: str) -> None:
    """``--check-data``. In a distributed run each process checks its share of the
    samples, with no communication: one that finds a problem exits and its launcher
    (torchrun, srun --kill-on-bad-exit) stops the others."""
    from mmengine.registry import init_default_scope
    from .dataset_check import check_datasets, default_workers
    shard, workers = (0, 1), default_workers()
    if launcher != 'none':
        distributed.export_rank_env(launcher)
        shard, workers = (int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])), 0
    scope.register_modules()
    init_default_scope(scope.name)
    problems = check_datasets(cfg, scope.name, _train_splits(cfg), workers, shard)
    if problems:
        raise UserError(f'--check-data: {len(problems)} problem(s) in the data, listed '
                        'above; fix or remove those samples before training (python '
                        'tools/misc/check_dataset.py CONFIG lists them without training)')


def _train(argv: Optional[List[str]]) -> None:
    args = train_parser().parse_args(argv)
    cfg, scope = _load(args)
    prepare_train_config(cfg, args)
    if args.check_data:
        _check_data(cfg, scope, args.launcher)
    _start(cfg, scope, args.launcher).train()


def _test(argv: Optional[List[str]]) -> None:
    args = test_parser().parse_args(argv)
    cfg, scope = _load(args)
    prepare_test_config(cfg, args, scope)
    runner = _start(cfg, scope, args.launcher)
    if args.out:
        runner.test_evaluator.metrics.append(scope.build_dump_metric(args.out))
    if args.amp:
        from .amp_inference import autocast_features
        autocast_features(runner.model)
    runner.test()


def train_main(argv: Optional[List[str]] = None) -> int:
    """``tools/train.py``: returns the exit status."""
    return run_main(_train, argv)


def test_main(argv: Optional[List[str]] = None) -> int:
    """``tools/test.py``: returns the exit status."""
    return run_main(_test, argv)
