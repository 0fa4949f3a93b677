"""Preemption-safe checkpoints for mmengine's Runner.

A job killed by the scheduler (SIGKILL on preemption, a node failure) or stopped by a full
disk while mmengine 0.10.7's ``CheckpointHook`` writes can leave the work dir unusable:

* ``LocalBackend.put`` writes the checkpoint in place, so a cut-short write leaves a
  truncated ``iter_N.pth``, and ``last_checkpoint`` (also written in place) points at it;
  ``--resume`` then dies in ``torch.load`` ("PytorchStreamReader failed reading zip
  archive") and nothing falls back to the previous checkpoint;
* with ``max_keep_ckpts`` the hook deletes the oldest checkpoint *before* writing the new
  one: with ``max_keep_ckpts=1`` a kill during the write leaves no checkpoint at all.

:class:`PreemptionSafeCheckpointHook` (a ``CheckpointHook`` subclass, registered in
mmengine's ``HOOKS`` when ``projects.msvmamba_mm`` is imported, e.g. through a config's
``custom_imports``, so mmdet's/mmseg's own ``tools/train.py`` get it too) fixes both:

* checkpoints and ``last_checkpoint`` are written atomically (a temporary file in the same
  folder, fsync, rename, fsync of the folder) through the ``atomic_local`` file backend
  (:class:`AtomicLocalBackend`), so a file under its final name is always complete;
* outdated checkpoints are removed only after the new one and ``last_checkpoint`` are on disk;
* a model with nan/inf weights is not written, and a failed write (a full disk, a folder
  that became unwritable) ends the run on every rank with an error naming the file, the
  free space and the previous checkpoint, which is intact;
* before resuming it checks the checkpoint (zip structure and CRCs, no unpickling): when
  ``--resume`` finds the latest one unusable it resumes from the newest valid older one and
  logs which; when none is valid it stops with an error naming every file; an unusable
  explicit ``--resume PATH`` is an error naming the file;
* a checkpoint that would load no weight (``load_from``, ``tools/test.py CONFIG CKPT``,
  ``--resume``) is an error naming the file: mmengine loads non-strictly and only logs the
  missing keys, so an official MSVMamba file (``{'model': ...}``, original key names) or
  another model's checkpoint would otherwise be evaluated or fine-tuned from random weights.
"""
import glob
import os
import os.path as osp
import re
import secrets
import shutil
import zipfile
from typing import Iterable, List, Optional, Tuple

import torch
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

from .errors import UserError
from .rank_agreement import on_any_rank

BACKEND_NAME = 'atomic_local'
POINTER_NAME = 'last_checkpoint'  # what mmengine's find_latest_checkpoint reads
# a checkpoint saved inside an epoch of an epoch-based schedule (PreemptionHook)
INTERRUPTED_TMPL = 'iter_{}.pth'
INTERRUPTED_KEY = 'interrupted_ckpts'  # message hub: those not yet superseded
_PARTIAL = re.compile(r'^\..+\.\d+\.[0-9a-f]{8}\.partial$')


class UnusableCheckpointError(UserError):
    """A checkpoint to resume from is missing or unreadable, or one to load holds no
    weight of the model (the tools print it as one line; other entry points show it as the
    exception's message)."""


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (full disk, unwritable folder); the previous one
    is intact."""


class NonFiniteWeightsError(UserError):
    """The model holds nan/inf values: no checkpoint is written."""


# --------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------
def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms that cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds either its old content or all of
    ``data``, never a part: a temporary file in the same folder (hidden, named
    ``.<name>.<pid>.<random>.partial``), fsync, rename over ``path``, fsync of the folder.
    On any error the temporary file is removed and the error propagates."""
    path = osp.abspath(os.fspath(path))
    folder = osp.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = osp.join(folder, f'.{osp.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.partial')
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_folder(folder)


def remove_partial_files(folder: str) -> List[str]:
    """Delete the temporary files that killed :func:`atomic_write` calls left in
    ``folder``; returns their names."""
    removed = []
    for name in sorted(os.listdir(folder)) if osp.isdir(folder) else []:
        if _PARTIAL.match(name):
            try:
                os.unlink(osp.join(folder, name))
                removed.append(name)
            except OSError:
                pass
    return removed


@register_backend(BACKEND_NAME, force=True)
class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend whose writes are atomic (:func:`atomic_write`).
    Select it with ``backend_args=dict(backend='atomic_local')``."""

    def put(self, obj: bytes, filepath) -> None:
        atomic_write(filepath, obj)

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        atomic_write(filepath, obj.encode(encoding))


# --------------------------------------------------------------------------------------
# checking checkpoints
# --------------------------------------------------------------------------------------
def checkpoint_problem(path: str) -> Optional[str]:
    """None if ``path`` is a complete checkpoint file, else what is wrong with it.

    A torch (>= 1.6) checkpoint is a zip archive: its central directory (at the end: gone
    when the write was cut short) and the CRC-32 of every record are checked, which reads
    the file once but unpickles nothing. Files in torch's older format are loaded with
    ``torch.load(weights_only=True)``.
    """
    if not path:
        return 'no file named'
    try:
        size = osp.getsize(path)
        with open(path, 'rb') as f:
            head = f.read(4)
    except FileNotFoundError:
        return 'the file does not exist'
    except OSError as e:
        return f'it cannot be read ({e})'
    if size == 0:
        return 'the file is empty'
    if head.startswith(b'PK'):
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
                names = archive.namelist()
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
            return (f'not a complete zip archive ({e}; {size} bytes): the write was '
                    'probably cut short')
        if bad is not None:
            return f'record {bad} fails its CRC check (the file is damaged)'
        if not any(n.endswith('/data.pkl') or n == 'data.pkl' for n in names):
            return 'a zip archive without data.pkl: not a torch checkpoint'
        return None
    try:
        torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # any failure means the file cannot be resumed from
        return f'torch.load fails: {type(e).__name__}: {str(e).splitlines()[0][:200]}'
    return None


def _step_of(path: str, filename_tmpl: str) -> Optional[int]:
    """N when ``path``'s file name is ``filename_tmpl`` (e.g. 'iter_{}.pth') with N."""
    pattern = '^' + re.escape(filename_tmpl).replace(r'\{\}', r'(\d+)') + '$'
    match = re.match(pattern, osp.basename(path))
    return int(match.group(1)) if match else None


def _numbered_checkpoints(folder: str, filename_tmpl: str) -> List[Tuple[int, str]]:
    """(step, path) of the files in ``folder`` named like ``filename_tmpl``, newest first."""
    paths = glob.glob(osp.join(glob.escape(folder), '*'))
    steps = ((_step_of(p, filename_tmpl), p) for p in paths)
    return sorted(((s, p) for s, p in steps if s is not None), reverse=True)


def newest_valid_checkpoint(folder: str, filename_tmpl: str, below: Optional[int] = None
                            ) -> Tuple[Optional[str], List[str]]:
    """(path of the newest complete checkpoint in ``folder`` with a step under ``below``,
    or None; '<file> (<problem>)' for each unusable one checked on the way)."""
    rejected = []
    for step, path in _numbered_checkpoints(folder, filename_tmpl):
        if below is not None and step >= below:
            continue
        problem = checkpoint_problem(path)
        if problem is None:
            return path, rejected
        rejected.append(f'{path} ({problem})')
    return None, rejected


def _read_pointer(work_dir: str) -> Optional[str]:
    """Content of ``<work_dir>/last_checkpoint`` (None when there is no such file)."""
    pointer = osp.join(work_dir, POINTER_NAME)
    if not osp.isfile(pointer):
        return None
    with open(pointer, encoding='utf-8', errors='replace') as f:
        return f.read().strip()


def _is_local(path: str) -> bool:
    return '://' not in path


def choose_resume_checkpoint(work_dir: str, filename_tmpl: str,
                             logger=None) -> Optional[str]:
    """For ``--resume`` without a path: the checkpoint to resume from, or None to let
    mmengine go on as usual (no ``last_checkpoint``: train from scratch; or the file it
    names is fine or not local).

    When the latest checkpoint is unusable, returns the newest valid checkpoint older
    than it from the same folder (and logs a warning saying so); raises
    :class:`UnusableCheckpointError` naming every file when none is valid.
    """
    latest = _read_pointer(work_dir)
    if latest is None or (latest and not _is_local(latest)):
        return None
    problem = checkpoint_problem(latest)
    if problem is None:
        return None
    pointer = osp.join(work_dir, POINTER_NAME)
    folder = osp.dirname(latest) if latest else work_dir
    below = _step_of(latest, filename_tmpl) if latest else None
    fallback, rejected = newest_valid_checkpoint(folder, filename_tmpl, below)
    what = f'the latest checkpoint {latest} (named by {pointer})' if latest else \
        f'{pointer} names no checkpoint'
    if fallback is None:
        tried = ''.join(f'\n  {r}' for r in rejected) or \
            f' no other checkpoint named like {filename_tmpl!r} in {folder}'
        raise UnusableCheckpointError(
            f'cannot resume: {what} is unusable ({problem}), and no older checkpoint is '
            f'valid:{tried}\nTo train from scratch instead, run without --resume.')
    if logger is not None:
        skipped = ''.join(f'; also skipped {r}' for r in rejected)
        logger.warning(
            f'{what} is unusable ({problem}); resuming from {fallback} instead, the '
            f'newest valid checkpoint before it{skipped}. The iterations after it are '
            'trained again.')
    return fallback


def check_explicit_checkpoint(path: str, filename_tmpl: str, what: str = '--resume') -> None:
    """Raise :class:`UnusableCheckpointError` naming ``path`` (and the newest valid checkpoint
    beside it, if any) when ``path`` is not a usable checkpoint."""
    if not _is_local(path):
        return
    problem = checkpoint_problem(path)
    if problem is None:
        return
    hint = ''
    if osp.isdir(osp.dirname(osp.abspath(path))):
        other, _ = newest_valid_checkpoint(osp.dirname(osp.abspath(path)), filename_tmpl,
                                           _step_of(path, filename_tmpl))
        if other is not None:
            hint = f' The newest valid checkpoint before it is {other}.'
    raise UnusableCheckpointError(f'{what} {path}: not a usable checkpoint: {problem}.{hint}')


def _loads_nothing_problem(checkpoint, model_keys) -> Optional[str]:
    """Why mmengine's non-strict load of ``checkpoint`` (as unpickled) would put no weight
    into a model with state-dict keys ``model_keys``, or None when some weight fits."""
    if not isinstance(checkpoint, dict):
        return f'it holds a {type(checkpoint).__name__}, not a dict of weights'
    if 'state_dict' not in checkpoint and ('model' in checkpoint or 'model_ema' in checkpoint):
        return ("it is an official MSVMamba checkpoint ('model' weights under the original "
                'key names): convert it first with python '
                'tools/model_converters/msvmamba2mmpretrain.py IN OUT (classification), or '
                'use it to initialise a backbone with --cfg-options '
                'model.backbone.init_cfg.checkpoint=PATH')
    weights = checkpoint.get('state_dict', checkpoint)
    names = {re.sub(r'^module\.', '', k) for k in weights if isinstance(k, str)}
    own = set(model_keys)
    if names & own:
        return None
    return (f'none of its {len(names)} weight names is one of the model\'s {len(own)} '
            f'(it has e.g. {sorted(names)[:3]}; the model has e.g. {sorted(own)[:3]}): '
            'a checkpoint of another model?')


def check_loads_some_weight(checkpoint, model, path: str) -> None:
    """Raise :class:`UnusableCheckpointError` naming ``path`` when mmengine's non-strict
    load of ``checkpoint`` (as unpickled) would put no weight into ``model``."""
    problem = _loads_nothing_problem(checkpoint, model.state_dict().keys())
    if problem is not None:
        raise UnusableCheckpointError(f'{path} would load no weight into the '
                                      f'{type(model).__name__}: {problem}')


# --------------------------------------------------------------------------------------
# what is written
# --------------------------------------------------------------------------------------
def nonfinite_tensors(named_tensors: Iterable[Tuple[str, object]]) -> List[str]:
    """Names of the floating-point tensors among ``(name, value)`` pairs that hold nan or
    inf (one host synchronisation per device)."""
    by_device = {}
    for name, value in named_tensors:
        if torch.is_tensor(value) and value.is_floating_point():
            by_device.setdefault(value.device, []).append((name, value))
    bad = []
    for group in by_device.values():
        finite = torch.stack([torch.isfinite(value).all() for _, value in group]).tolist()
        bad += [name for (name, _), ok in zip(group, finite) if not ok]
    return bad


def _size(num_bytes: float) -> str:
    if num_bytes < 1024:
        return f'{num_bytes:.0f} bytes'
    for unit in ('KiB', 'MiB', 'GiB', 'TiB'):
        num_bytes /= 1024
        if num_bytes < 1024 or unit == 'TiB':
            return f'{num_bytes:.1f} {unit}'


def _free_space(folder: str) -> str:
    """'<size> free' on the file system of ``folder`` (or of its nearest existing parent)."""
    while folder and not osp.isdir(folder) and osp.dirname(folder) != folder:
        folder = osp.dirname(folder)
    try:
        return f'{_size(shutil.disk_usage(folder).free)} free'
    except OSError:
        return 'free space unknown'


def _kept(previous: Optional[str]) -> str:
    if not previous:
        return 'no earlier checkpoint of this run was written'
    size = ''
    if _is_local(previous) and osp.isfile(previous):
        size = f' ({_size(osp.getsize(previous))})'
    return f'the last checkpoint, {previous}{size}, is kept'


def _write_error_message(path: str, error: Optional[OSError], previous: Optional[str]) -> str:
    if error is None:  # this rank wrote nothing: rank 0 failed
        return (f'rank 0 could not write checkpoint {path} (its error names the reason); '
                f'{_kept(previous)}')
    folder = osp.dirname(str(path))
    where = f' ({_free_space(folder)} in {folder})' if _is_local(str(path)) else ''
    return (f'cannot write checkpoint {path}: {error.strerror or error}{where}; '
            f'{_kept(previous)} and last_checkpoint names it. Free some space or make the '
            'folder writable, then run again with --resume')


# --------------------------------------------------------------------------------------
# the hook
# --------------------------------------------------------------------------------------
@HOOKS.register_module(force=True)
class PreemptionSafeCheckpointHook(CheckpointHook):
    """``CheckpointHook`` whose checkpoints survive a kill at any moment.

    Same arguments and files as mmengine's ``CheckpointHook``. In addition (local
    ``out_dir`` only; remote storage keeps its own backend):

    * every checkpoint and ``last_checkpoint`` is written atomically
      (:class:`AtomicLocalBackend`), and outdated checkpoints (``max_keep_ckpts``) are
      removed after the new one is safely on disk, not before;
    * before ``--resume`` (``resume=True``) loads anything, the checkpoint is checked:
      an unusable latest one is replaced by the newest valid older one (with a warning),
      none valid or an unusable explicit checkpoint stops the run with an error naming
      the files;
    * a loaded checkpoint (``load_from`` or resume) with no weight of the model is an
      error naming it (mmengine alone would only log the missing keys);
    * a model holding nan/inf is never written (:class:`NonFiniteWeightsError`), so
      ``max_keep_ckpts`` never replaces the last finite checkpoint by a diverged one;
    * a write that fails (full disk, unwritable folder) stops every rank with an error
      naming the file, the free space and the checkpoint that was kept
      (:class:`CheckpointWriteError`);
    * :meth:`save_interrupted` saves outside the schedule (:class:`.PreemptionHook`).

    Args:
        **kwargs: mmengine's ``CheckpointHook`` arguments.
    """

    saved_iter: Optional[int] = None  # iterations done at the last successful write

    def before_run(self, runner) -> None:
        # runs before Runner.load_or_resume, which reads these two attributes (mmengine 0.10)
        if not getattr(runner, '_resume', False):
            return
        load_from = getattr(runner, '_load_from', None)
        if load_from is None:
            chosen = choose_resume_checkpoint(runner.work_dir, self.filename_tmpl,
                                              runner.logger)
            if chosen is not None:
                runner._load_from = chosen  # resume from it instead of last_checkpoint
        else:
            check_explicit_checkpoint(load_from, self.filename_tmpl)

    def after_load_checkpoint(self, runner, checkpoint) -> None:
        check_loads_some_weight(checkpoint, getattr(runner.model, 'module', runner.model),
                                getattr(runner, '_load_from', None) or 'the checkpoint')

    def before_train(self, runner) -> None:
        out_dir = self.out_dir or runner.work_dir
        if (self.backend_args is None and self.file_client_args is None
                and _is_local(str(out_dir))):
            self.backend_args = dict(backend=BACKEND_NAME)
        super().before_train(runner)
        if is_main_process() and _is_local(str(self.out_dir)):
            removed = remove_partial_files(str(self.out_dir))
            if removed:
                runner.logger.info(f'removed {len(removed)} partial checkpoint file(s) left '
                                   f'by an interrupted run: {", ".join(removed)}')

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        outdated = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids
                                            and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids[0])  # the deque drops it on append
            self.keep_ckpt_ids.append(step)
            # saved inside the checkpoint: a resumed run knows which files it keeps
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        self._write(runner, self.filename_tmpl.format(step), meta,
                    [self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old))
                     for old in outdated])

    def save_interrupted(self, runner, iters_done: int, meta: dict) -> str:
        """Save the checkpoint of a run stopped after ``iters_done`` iterations, outside
        the schedule (e.g. on a preemption signal); returns its path. An iteration-based
        schedule numbers it like its own (``filename_tmpl``, counted by
        ``max_keep_ckpts``); an epoch-based one names it ``iter_<iters_done>.pth`` and
        removes it once a later checkpoint is saved."""
        if not self.by_epoch:
            self._save_checkpoint_with_step(runner, iters_done, meta)
        else:
            self._write(runner, INTERRUPTED_TMPL.format(iters_done), meta, [],
                        interrupted=True)
        return self.last_ckpt

    def _write(self, runner, filename: str, meta: dict, outdated: List[str],
               interrupted: bool = False) -> None:
        """Write checkpoint ``filename`` and ``last_checkpoint`` (rank 0), then remove the
        ``outdated`` files and earlier interrupted-run checkpoints. Every rank calls it;
        all of them raise when the weights are not finite or the write failed."""
        path = self.file_backend.join_path(self.out_dir, filename)
        hub = runner.message_hub
        previous = hub.get_info('last_ckpt')
        model = getattr(runner.model, 'module', runner.model)
        bad = nonfinite_tensors(model.state_dict().items())
        if on_any_rank(bool(bad)):
            raise NonFiniteWeightsError(
                f'not writing checkpoint {path}: '
                + (f'{len(bad)} tensors of the model hold nan/inf (e.g. '
                   f'{", ".join(bad[:3])})' if bad else 'another process\'s weights hold '
                   'nan/inf')
                + f'; {_kept(previous)}')
        older = list(hub.get_info(INTERRUPTED_KEY) or [])
        # both saved inside the checkpoint itself (mmengine's CheckpointHook does the same)
        hub.update_info(INTERRUPTED_KEY, [path] if interrupted else [])
        self.last_ckpt = path
        hub.update_info('last_ckpt', path)
        error = None
        try:
            runner.save_checkpoint(
                self.out_dir, filename, self.file_client_args,
                save_optimizer=self.save_optimizer,
                save_param_scheduler=self.save_param_scheduler,
                meta=meta, by_epoch=self.by_epoch, backend_args=self.backend_args,
                **self.args)
            if is_main_process():
                atomic_write(osp.join(runner.work_dir, POINTER_NAME), str(path).encode())
        except OSError as e:  # a full disk, a folder made read-only, ...
            error = e
        if on_any_rank(error is not None):
            hub.update_info(INTERRUPTED_KEY, older)
            if previous is not None:
                self.last_ckpt = previous
                hub.update_info('last_ckpt', previous)
            raise CheckpointWriteError(_write_error_message(path, error, previous))
        self.saved_iter = (meta or {}).get('iter')
        if not is_main_process():
            return
        for old in outdated + older:  # only now that the new checkpoint is complete
            if old == path:
                continue
            if self.file_backend.isfile(old):
                self.file_backend.remove(old)
            elif self.file_backend.isdir(old):  # deepspeed saves folders
                self.file_backend.rmtree(old)
