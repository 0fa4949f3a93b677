"""Reading MSVMamba checkpoints safely and loading them into the backbone loudly.

Reading (:func:`load_checkpoint_file`). Official classification checkpoints (both upstream
branches) are training snapshots: ``{'model': ..., 'model_ema': ..., 'optimizer': ...,
'lr_scheduler': ..., 'config': <yacs CfgNode>, ...}``. Every file is read with
``torch.load(weights_only=True)``: torch's restricted unpickler, which builds tensors,
plain containers, numbers and strings and refuses anything else (no code named by the file
runs, no object is modified). For the duration of the call only (torch's public
``torch.serialization.safe_globals``), it also accepts:

* ``yacs.config.CfgNode`` (the official ``config``), through a stand-in: each node comes
  back as an ``OrderedDict`` of its items, with yacs's bookkeeping flags in its
  ``__dict__``. yacs is not needed and none of its code runs.
* numpy scalars (``numpy.float64`` metrics such as a best accuracy) and their dtypes.

Whatever else a file asks for is refused with an error that names the file and the fix.
mmengine training checkpoints also hold ``HistoryBuffer`` objects; importing
``projects.msvmamba_mm`` (the tools and configs do) allows those process-wide.

Loading (:func:`load_pretrained`, what ``init_cfg=dict(type='Pretrained', ...)`` does) is
strict by default: it raises when the file supplies no weight of the backbone, when a
weight is missing or left over, or when a shape differs. The norms and heads that exist in
only one of the two modes (``outnorm{i}`` dense, ``final_norm`` / ``classifier.*``
classification) are expected to be missing or left over when weights move between modes
and load quietly. ``strict=False`` asks for a partial load explicitly.
"""
import logging
import pickle
import re
import zipfile
from collections import Counter, OrderedDict
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

__all__ = [
    'CheckpointError', 'YacsConfigStandIn', 'load_checkpoint_file', 'is_official_checkpoint',
    'extract_state_dict', 'load_state_dict', 'load_pretrained', 'convert_to_mmpretrain',
    'LoadReport'
]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read safely, or whose weights do not fit the model."""


class YacsConfigStandIn:
    """What ``yacs.config.CfgNode`` resolves to while a checkpoint is read.

    A pickled CfgNode is an empty object created from its class, then filled with its
    items and given its ``__dict__`` (yacs's flags). Creating one returns an
    ``OrderedDict`` instead, the one mapping torch's restricted unpickler lets a file fill
    with items and flags; no instance of this class ever exists and nothing of yacs runs.
    """

    def __new__(cls, *args, **kwargs):
        return OrderedDict()


def _reading_globals() -> List[object]:
    """What checkpoints may name beyond torch's own allowlist, in the form
    ``torch.serialization.safe_globals`` takes."""
    extra: List[object] = [(YacsConfigStandIn, 'yacs.config.CfgNode'), np.dtype]
    # A dtype is rebuilt as numpy.dtype(...) and then given its state, which torch allows
    # only for allowlisted types: the classes of dtype instances (numpy.dtypes.*DType).
    extra += sorted({type(np.dtype(code)) for code in np.typecodes['All']}, key=str)
    # np.float64(...) etc. is rebuilt by multiarray.scalar(dtype, raw bytes) (numpy
    # refuses raw bytes for object dtypes, so it builds numbers only). numpy 1 pickled it
    # as numpy.core.multiarray.scalar, numpy 2 as numpy._core...: files hold either.
    scalar = np.float64(0).__reduce__()[0]
    extra += [(scalar, f'numpy.{core}.multiarray.scalar') for core in ('core', '_core')]
    return extra


def _first_bytes(path: str, n: int = 8) -> bytes:
    try:
        with open(path, 'rb') as f:
            return f.read(n)
    except OSError:
        return b''


def _refusal(path: str, shown_as: str, err: BaseException) -> CheckpointError:
    """Turn what torch.load raised into an error that names the file and the fix."""
    head = _first_bytes(path)
    first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if isinstance(err, FileNotFoundError):
        return CheckpointError(f'{shown_as}: no such checkpoint file; check the path')
    if isinstance(err, EOFError) or not head:
        return CheckpointError(f'{shown_as}: the file is empty or ends early; download or '
                               'copy it again')
    if not head.startswith((b'PK', b'\x80')):  # a zip archive, or a legacy torch pickle
        return CheckpointError(f'{shown_as}: not a PyTorch checkpoint (torch.save writes a '
                               f'zip archive; this file starts with {head!r}); pass the '
                               '.pth file itself')
    if isinstance(err, pickle.UnpicklingError):
        return _unsafe(shown_as, str(err))
    if head.startswith(b'PK') and not zipfile.is_zipfile(path):
        return CheckpointError(f'{shown_as}: the zip archive is truncated or corrupt '
                               f'({first_line}); download or copy it again and compare its '
                               'size or checksum')
    return CheckpointError(f'{shown_as}: not readable as a PyTorch checkpoint ({first_line}); '
                           'was it written by torch.save? Download or copy it again')


def _unsafe(shown_as: str, torch_message: str) -> CheckpointError:
    # torch's own reason, without its general advice around it
    reason = re.split(r'WeightsUnpickler error:|from a trusted source\.', torch_message)[-1]
    reason = re.split(r'Check the documentation|Please use `torch', reason)[0]
    reason = ' '.join(reason.split())
    fix = ('If you trust the file, extract its weights once in a separate Python session '
           "(torch.save(torch.load(PATH, weights_only=False)['model'], 'weights.pth')) and "
           'load weights.pth')
    if 'mmengine' in reason:
        fix = ('It is an mmengine training checkpoint: import projects.msvmamba_mm first '
               "(configs: custom_imports=dict(imports=['projects.msvmamba_mm'])), which "
               "allows mmengine's checkpoint objects")
    return CheckpointError(
        f'{shown_as}: refused, it asks for more than tensors, containers, numbers, numpy '
        f'scalars and yacs configs ({reason}). Nothing it names was run. {fix}.')


def load_checkpoint_file(path: str, map_location='cpu'):
    """Read a checkpoint with ``torch.load(weights_only=True)`` (see the module doc).

    Args:
        path (str): Local path, or any URI mmengine's file backends handle (if installed).
        map_location: As for ``torch.load``. Defaults to 'cpu'.

    Returns:
        The unpickled object (official files: a dict with a yacs config as OrderedDicts).

    Raises:
        CheckpointError: the file is missing, truncated, not a checkpoint, or asks for
            objects a weights-only load refuses (nothing in it is run).
    """
    if '://' in str(path):
        from mmengine.fileio import get_local_path  # remote files need mmengine
        with get_local_path(path) as local:
            return _load_local(str(local), map_location, shown_as=f'{path} ({local})')
    return _load_local(str(path), map_location, shown_as=str(path))


def _load_local(path: str, map_location, shown_as: str):
    # Only what the process does not allow already: leaving the context removes exactly
    # these again, and must not remove what someone else (projects.msvmamba_mm) added.
    already = set(torch.serialization.get_safe_globals())
    extra = [g for g in _reading_globals() if g not in already]
    try:
        with torch.serialization.safe_globals(extra):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # every failure of reading becomes one named error
        raise _refusal(path, shown_as, err) from err


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def is_official_checkpoint(ckpt) -> bool:
    """An unpickled checkpoint in the layout of the released files: the weights under
    ``'model'`` / ``'model_ema'``, with the upstream key names."""
    return isinstance(ckpt, dict) and ('model' in ckpt or 'model_ema' in ckpt)


def extract_state_dict(ckpt, use_ema: bool = False,
                       source: str = 'checkpoint') -> Tuple[Dict[str, torch.Tensor], str]:
    """Find the weights in an unpickled checkpoint.

    Official files: ``ckpt['model']`` or, with ``use_ema``, ``ckpt['model_ema']``.
    mmengine files: ``ckpt['state_dict']`` (EMAHook already saves its EMA weights there).
    Otherwise the object must itself be a state dict. A leading ``module.`` (DDP) is
    removed from every key.

    Returns:
        tuple: (state dict, a short description of where it came from).
    """
    if not isinstance(ckpt, dict):
        raise TypeError(f'{source}: expected a dict, got {type(ckpt).__name__}')
    if is_official_checkpoint(ckpt):
        key = 'model_ema' if use_ema else 'model'
        if key not in ckpt:
            raise KeyError(f"{source} is an official MSVMamba checkpoint without '{key}' "
                           f'weights (top-level keys: {sorted(map(str, ckpt))}); '
                           f'set use_ema={not use_ema}')
        state_dict, where = ckpt[key], f"official checkpoint, '{key}' weights"
    elif 'state_dict' in ckpt:
        if use_ema:
            raise ValueError(f'{source} is an mmengine checkpoint: use_ema applies only to '
                             "official files (mmengine's EMAHook saves the EMA weights as "
                             "'state_dict'); drop use_ema")
        state_dict, where = ckpt['state_dict'], 'mmengine checkpoint'
    else:
        state_dict, where = ckpt, 'state dict'
    if not _is_state_dict(state_dict):
        raise TypeError(f'{source} ({where}): no tensor state dict found; top-level keys: '
                        f'{sorted(map(str, ckpt))[:20]}')
    state_dict = OrderedDict(
        (k[len('module.'):] if k.startswith('module.') else k, v)
        for k, v in state_dict.items())
    return state_dict, where


def _strip_prefix(state_dict: Dict[str, torch.Tensor], prefix: str,
                  source: str) -> Dict[str, torch.Tensor]:
    if not prefix.endswith('.'):
        prefix += '.'
    stripped = OrderedDict((k[len(prefix):], v) for k, v in state_dict.items()
                           if k.startswith(prefix))
    if not stripped:
        raise CheckpointError(f'no key of {source} starts with prefix {prefix!r} (keys look '
                              f'like {_describe_keys(list(state_dict))}); official '
                              'checkpoints need no prefix')
    return stripped


def _key_pattern(key: str) -> str:
    """Numbered parts become '*': 'layers.0.blocks.1.norm.weight' ->
    'layers.*.blocks.*.norm.weight', 'outnorm2.bias' -> 'outnorm*.bias'."""
    parts = []
    for part in key.split('.'):
        if part.isdigit():
            part = '*'
        elif re.fullmatch(r'[A-Za-z_]+\d+', part):
            part = part.rstrip('0123456789') + '*'
        parts.append(part)
    return '.'.join(parts)


def _summarise_keys(keys: List[str]) -> str:
    """One line for many similar keys: 'layers.*.blocks.*.norm.weight (x12), ...'."""
    groups = Counter(_key_pattern(k) for k in keys)
    return ', '.join(p if n == 1 else f'{p} (x{n})' for p, n in groups.items())


def _describe_keys(keys: List[str]) -> str:
    """What a file's keys look like: their top-level groups and a few examples."""
    groups = Counter(k.split('.', 1)[0] + ('.*' if '.' in k else '') for k in keys)
    shown = ', '.join(f'{g} (x{n})' for g, n in list(groups.items())[:8])
    more = f', ... ({len(groups) - 8} more groups)' if len(groups) > 8 else ''
    return f'{len(keys)} tensors: {shown}{more}; e.g. {", ".join(keys[:3])}'


def _log(message: str, level: int):
    try:
        from mmengine.logging import print_log
    except ImportError:  # pragma: no cover
        logging.getLogger(__name__).log(level, message)
    else:
        print_log(message, logger='current', level=level)


# Keys that exist in only one mode of the backbone (dense: outnorm{i}; classification:
# final_norm) or only in classification files (classifier.*: the head, and the norm when
# the backbone has no final_norm). Moving weights between modes leaves them missing or
# unused by design.
_MODE_DEPENDENT = re.compile(r'(outnorm\d+|final_norm|classifier)\.')


def _is_mode_dependent(key: str) -> bool:
    return bool(_MODE_DEPENDENT.match(key))


def _prefix_hint(state_dict: Dict[str, torch.Tensor], own: Dict[str, torch.Tensor]) -> str:
    """'use prefix=...' when the backbone's weights sit under one top-level name."""
    matches = Counter(k.split('.', 1)[0] for k in state_dict
                      if '.' in k and k.split('.', 1)[1] in own
                      and not _is_mode_dependent(k.split('.', 1)[1]))
    if not matches:
        return ('they do not look like MSVMamba weights (wrong file, or a different '
                'model?)')
    prefix = matches.most_common(1)[0][0] + '.'
    everyone = all(k.startswith(prefix) for k in state_dict)
    return (f"{'every key' if everyone else 'the backbone weights'} start{'s' * everyone} "
            f"with {prefix!r}: use prefix={prefix!r}")


class LoadReport(NamedTuple):
    """What :func:`load_state_dict` did."""
    loaded: List[str]
    missing: List[str]
    unexpected: List[str]
    message: str


def load_state_dict(module: nn.Module, state_dict: Dict[str, torch.Tensor],
                    source: str = 'checkpoint', strict: bool = True) -> LoadReport:
    """Load by name with the checks described in the module doc, and one summary log.

    Raises (before anything is loaded) :class:`CheckpointError` when no weight of
    ``module`` apart from the mode-dependent norms is in ``state_dict``, when a shape
    differs, and, with ``strict``, when any other key is missing or unused.
    """
    own = module.state_dict()
    name = type(module).__name__
    if not any(k in own and not _is_mode_dependent(k) for k in state_dict):
        raise CheckpointError(
            f'{source} holds no weight of this {name}. Its keys look like: '
            f'{_describe_keys(list(state_dict))}; {_prefix_hint(state_dict, own)}')
    mismatches = [f'  {k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
                  for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    if mismatches:
        raise CheckpointError(f'shape mismatch loading {source} into {name} (wrong arch?):\n'
                              + '\n'.join(mismatches))
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    surprises = [(what, [k for k in keys if not _is_mode_dependent(k)])
                 for what, keys in (('missing in checkpoint', missing),
                                    ('in checkpoint but not in the model', unexpected))]
    surprises = [(what, keys) for what, keys in surprises if keys]
    details = ''.join(f'\n  {what}: {_summarise_keys(keys)}' for what, keys in surprises)
    if strict and surprises:
        raise CheckpointError(
            f'{source} does not fit this {name}:{details}\nCheck arch and prefix; to load '
            'the matching weights only, pass strict=False (init_cfg=dict(type='
            "'Pretrained', ..., strict=False) or load_pretrained(..., strict=False))")
    module.load_state_dict(OrderedDict((k, v) for k, v in state_dict.items() if k in own),
                           strict=False)
    loaded = [k for k in state_dict if k in own]
    lines = [f'{name}: loaded {len(loaded)}/{len(own)} tensors from {source}']
    if surprises:
        lines.append('  partial load (strict=False):' + details)
    expected = [k for k in missing + unexpected if _is_mode_dependent(k)]
    if expected:
        lines.append(f'  only in one mode, as expected: {_summarise_keys(expected)}')
    message = '\n'.join(lines)
    _log(message, logging.WARNING if surprises else logging.INFO)
    return LoadReport(loaded, missing, unexpected, message)


def load_pretrained(module: nn.Module,
                    checkpoint: str,
                    prefix: Optional[str] = None,
                    use_ema: bool = False,
                    map_location='cpu',
                    strict: bool = True) -> LoadReport:
    """Load a checkpoint file into ``module`` (what ``init_cfg=dict(type='Pretrained')``
    does for :class:`MSVMamba`).

    Args:
        module (nn.Module): Target; if it has ``adapt_state_dict``, the checkpoint keys
            go through it (MSVMamba maps ``classifier.norm.*`` to its final norm).
        checkpoint (str): Official, mmengine or bare-state-dict file.
        prefix (str, optional): Keep only keys under this prefix and strip it, e.g.
            'backbone.' to take the backbone out of a whole-model mmengine checkpoint.
        use_ema (bool): Official files: load 'model_ema' instead of 'model'.
        map_location: As for ``torch.load``.
        strict (bool): Raise on missing or unused keys other than the mode-dependent
            ones (see the module doc). False loads what matches and logs a warning.
    """
    ckpt = load_checkpoint_file(checkpoint, map_location)
    state_dict, where = extract_state_dict(ckpt, use_ema, source=checkpoint)
    if prefix:
        state_dict = _strip_prefix(state_dict, prefix, checkpoint)
    if hasattr(module, 'adapt_state_dict'):
        state_dict = module.adapt_state_dict(state_dict)
    source = f'{checkpoint} ({where}{", prefix " + repr(prefix) if prefix else ""})'
    return load_state_dict(module, state_dict, source, strict=strict)


def convert_to_mmpretrain(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official classification keys -> mmpretrain ImageClassifier keys:
    ``classifier.norm.*`` -> ``backbone.final_norm.*`` (MSVMamba's classification norm),
    ``classifier.head.*`` -> ``head.fc.*`` (LinearClsHead), the rest -> ``backbone.*``."""
    renames = (('classifier.norm.', 'backbone.final_norm.'), ('classifier.head.', 'head.fc.'))
    converted = OrderedDict()
    for key, value in state_dict.items():
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        else:
            key = 'backbone.' + key
        converted[key] = value
    return converted
