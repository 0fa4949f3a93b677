"""Checkpoint on a preemption signal, then exit: ``--resume`` loses at most one iteration.

Slurm sends SIGTERM on preemption and ``scancel`` and, when asked with ``--signal`` (as
``tools/slurm_train.sh`` does), SIGUSR1 shortly before the time limit; torchrun passes
SIGTERM on to its workers. mmengine does not handle them: the process dies and every
iteration since the last scheduled checkpoint is lost (up to an epoch of a COCO 1x run).

:class:`PreemptionHook` (in every config's ``default_hooks``; registered when
``projects.msvmamba_mm`` is imported, so mmdet's/mmseg's/mmpretrain's own
``tools/train.py`` use it too):

* its signal handlers only record the signal. At the end of each training iteration and
  after each validation the processes agree on whether any of them got one (one
  ``all_reduce(MAX)`` of a single number when distributed: a signal that reached only
  some ranks stops all of them at the same iteration, and nobody waits for a rank that
  left). Then the checkpoint of the iteration just finished is saved through the
  :class:`~.checkpoints.PreemptionSafeCheckpointHook` (atomic, ``last_checkpoint``
  updated, rank 0 writes; not written twice when the schedule has just saved it), all
  ranks wait for the write, and every process exits at once with
  :data:`PREEMPTED_EXIT_CODE` (75);
* a signal while a checkpoint is written or while validating waits for that to finish;
  the scheduler's grace time (Slurm: ``KillWait``/``GraceTime``, or the ``--signal``
  lead time) must cover one iteration, a validation and a checkpoint write;
* in an epoch-based schedule the checkpoint records how many batches of the epoch are
  done, and the resumed run skips exactly those (same sampler seed and order), so it
  continues at the next iteration, not at the start of the epoch;
* before training starts and after it ends (and in test runs) a signal does what it
  did before the hook was built.

The data loader workers get the signal too (Slurm signals every process of the job).
They are forked after the handlers are installed, so SIGUSR1 is ignored there; torch
makes SIGTERM end them, and from the signal on, their end is not reported as an error
(torch would otherwise raise it into the iteration being finished or the checkpoint
being written). No data is loaded after the signal, except by a validation that was
already running: that validation fails if its workers are gone, and the checkpoint
saved before it (when the checkpoint and validation intervals match) is what remains.
"""
import itertools
import logging
import os
import signal
import sys
import threading
from typing import Dict, Optional, Sequence, Union

from mmengine.dist import barrier
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.runner import EpochBasedTrainLoop

from .checkpoints import PreemptionSafeCheckpointHook
from .rank_agreement import max_over_ranks

# EX_TEMPFAIL of sysexits.h: a temporary failure, run again (with --resume) to continue
PREEMPTED_EXIT_CODE = 75
# checkpoint meta: batches of the epoch ``meta['epoch']`` already trained
BATCHES_DONE_KEY = 'epoch_batches_done'


def _signal_number(sig: Union[str, int]) -> int:
    if isinstance(sig, int):
        return signal.Signals(sig).value
    name = sig.upper() if sig.upper().startswith('SIG') else 'SIG' + sig.upper()
    if not hasattr(signal, name):
        raise ValueError(f'PreemptionHook: unknown signal {sig!r} (e.g. SIGTERM, SIGUSR1)')
    return getattr(signal, name).value


def _ignore_child_exit(signum, frame) -> None:
    """SIGCHLD handler from the preemption signal on: the data loader workers end too."""


class _SkipFirst:
    """An index sampler whose iteration starts ``count`` indices in (same order)."""

    def __init__(self, sampler, count: int):
        self.sampler, self.count = sampler, count

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.count, None)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.count, 0)

    def __getattr__(self, name):  # set_epoch, seed, ... of the wrapped sampler
        if name == 'sampler':  # not set yet (copy, unpickling)
            raise AttributeError(name)
        return getattr(self.sampler, name)


@HOOKS.register_module(force=True)
class PreemptionHook(Hook):
    """On a preemption signal, finish the iteration, save its checkpoint and exit.

    Needs :class:`~.checkpoints.PreemptionSafeCheckpointHook` as the checkpoint hook
    (without one it warns and leaves the signals alone). The handlers are installed when
    the hook is built, with the Runner: before any data loader worker is forked (mmengine's
    default start method), so the workers inherit them and ignore the signal (they stop
    with their parent).

    Args:
        signals (Sequence[str | int]): The signals that request a checkpoint and exit;
            none turns the hook off. Defaults to ('SIGTERM', 'SIGUSR1').
        exit_code (int): Exit status after the checkpoint is saved. Defaults to 75
            (:data:`PREEMPTED_EXIT_CODE`).
    """

    # after the checkpoint hook (VERY_LOW): a checkpoint it has just saved is reused
    priority = 'LOWEST'

    def __init__(self, signals: Sequence[Union[str, int]] = ('SIGTERM', 'SIGUSR1'),
                 exit_code: int = PREEMPTED_EXIT_CODE):
        self.signals = [_signal_number(s) for s in signals]
        self.exit_code = exit_code
        self._pid = os.getpid()
        self._previous: Dict[int, object] = {}
        self._training = False
        self._requested: Optional[int] = None
        self._checkpoint_hook: Optional[PreemptionSafeCheckpointHook] = None
        self._batch_idx: Optional[int] = None  # inside a training iteration
        self._loaded_meta: dict = {}
        self._skip: Optional[tuple] = None  # (epoch, batches done, seed) to resume inside
        self._skipped = 0  # batches skipped at the start of the current epoch
        self._install()

    # ---------------------------------------------------------------------------------
    # signal handlers
    # ---------------------------------------------------------------------------------
    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python handles signals in the main thread only
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _restore(self) -> None:
        if os.getpid() != self._pid or \
                threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _on_signal(self, signum, frame) -> None:
        if os.getpid() != self._pid:
            return  # a forked data loader worker: it stops with its parent
        if not self._training:  # building, loading, testing: what it did before
            previous = self._previous.get(signum)
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        if self._requested is None:
            self._requested = signum
            if hasattr(signal, 'SIGCHLD'):
                signal.signal(signal.SIGCHLD, _ignore_child_exit)

    # ---------------------------------------------------------------------------------
    # mmengine hook points
    # ---------------------------------------------------------------------------------
    def before_train(self, runner) -> None:
        hooks = [h for h in runner.hooks if isinstance(h, PreemptionSafeCheckpointHook)]
        if not hooks:
            runner.logger.warning(
                'PreemptionHook: no PreemptionSafeCheckpointHook among the hooks, so a '
                'preemption signal stops the run without a checkpoint; set '
                "default_hooks.checkpoint.type='PreemptionSafeCheckpointHook'")
            self._restore()
            return
        self._checkpoint_hook = hooks[0]
        self._training = bool(self._previous)
        meta = self._loaded_meta
        if (meta.get(BATCHES_DONE_KEY) and isinstance(runner.train_loop, EpochBasedTrainLoop)
                and (runner.epoch, runner.iter) == (meta.get('epoch'), meta.get('iter'))):
            self._skip = (meta['epoch'], int(meta[BATCHES_DONE_KEY]), meta.get('seed'))

    def after_load_checkpoint(self, runner, checkpoint) -> None:
        self._loaded_meta = dict(checkpoint.get('meta') or {})

    def before_train_epoch(self, runner) -> None:
        self._skipped = 0
        if self._skip is None or self._skip[0] != runner.epoch:
            return
        _, batches, seed = self._skip
        self._skip = None
        batch_sampler = getattr(runner.train_dataloader, 'batch_sampler', None)
        if batch_sampler is None or not hasattr(batch_sampler, 'sampler'):
            runner.logger.warning('resumed inside an epoch, but its data loader has no '
                                  'batch sampler to skip the trained batches with: the '
                                  'epoch is trained from its start')
            return
        sampler = batch_sampler.sampler
        if seed is not None and hasattr(sampler, 'seed'):
            sampler.seed = seed  # the interrupted run's order (DefaultSampler)
        batch_sampler.sampler = _SkipFirst(sampler, batches * batch_sampler.batch_size)
        self._skipped = batches
        runner.logger.info(f'resumed inside epoch {runner.epoch + 1}: skipping its first '
                           f'{batches} batches, trained before the interruption')

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._batch_idx = batch_idx

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        # any checkpoint saved inside an epoch (the preemption one, or an iteration-
        # interval one) says how far into the epoch it is, for the resumed run
        if self._batch_idx is not None and isinstance(runner.train_loop, EpochBasedTrainLoop):
            checkpoint['meta'].setdefault(BATCHES_DONE_KEY, self._skipped + self._batch_idx + 1)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        try:
            if self._training:
                self._stop_if_signalled(runner, runner.iter + 1)
        finally:
            self._batch_idx = None

    def after_train_epoch(self, runner) -> None:
        batch_sampler = getattr(runner.train_dataloader, 'batch_sampler', None)
        if isinstance(getattr(batch_sampler, 'sampler', None), _SkipFirst):
            batch_sampler.sampler = batch_sampler.sampler.sampler
        self._skipped = 0

    def after_val(self, runner) -> None:
        # validation runs after the iteration's after_train_iter: runner.iter counts it
        if self._training:
            self._stop_if_signalled(runner, runner.iter)

    def after_train(self, runner) -> None:
        self._training = False

    def after_run(self, runner) -> None:
        self._training = False
        self._restore()

    # ---------------------------------------------------------------------------------
    def _stop_if_signalled(self, runner, iters_done: int) -> None:
        signum, = max_over_ranks(self._requested or 0)  # the same on every rank
        if not signum:
            return
        hook = self._checkpoint_hook
        if hook.saved_iter == iters_done:  # the schedule saved this iteration already
            path = hook.last_ckpt
        else:
            path = hook.save_interrupted(runner, iters_done, meta=dict(epoch=runner.epoch,
                                                                       iter=iters_done))
        barrier()  # nobody exits (and has a launcher stop the others) before the write
        name = signal.Signals(signum).name
        runner.logger.info(
            f'{name} received: stopped after iteration {iters_done}, whose checkpoint is '
            f'{path}; exiting with status {self.exit_code}. Run again with --resume to '
            'continue.')
        # Leave now: everything is saved, the scheduler's grace time runs, and a launcher
        # (torchrun, srun --kill-on-bad-exit) that sees one rank exit kills the others:
        # all ranks exiting together keeps every rank's status 75. The interpreter's
        # teardown (seconds with torch and mmdet imported) is skipped; the log files and
        # the visualizer backends (TensorBoard's buffered events) are closed first.
        runner.visualizer.close()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(self.exit_code)
