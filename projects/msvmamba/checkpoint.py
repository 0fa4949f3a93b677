"""Reading MSVMamba checkpoints: official training files, mmengine files, bare state dicts.

Official classification checkpoints (both upstream branches) are training snapshots:
``{'model': ..., 'model_ema': ..., 'optimizer': ..., 'lr_scheduler': ..., 'config': <yacs
CfgNode>, ...}``. Under torch >= 2.6, ``torch.load``'s default ``weights_only=True`` refuses
them (the CfgNode), and ``weights_only=False`` would run whatever the pickle names, and
needs yacs installed.

Trust choice: :func:`load_checkpoint_file` unpickles with a restricted unpickler. Globals
that torch itself accepts with ``weights_only=True`` (tensor rebuilding, dtypes, ...) plus a
few inert builtins resolve to the real objects; EVERY other global (yacs.config.CfgNode,
numpy scalars, mmengine's HistoryBuffer, ...) becomes an inert dict-like stub that records
its name and arguments. So no code named by the file runs, files from any source can be
read, and yacs is not needed. The price: those non-tensor objects come back as stubs, which
is fine for reading weights (and nothing else here uses them).
"""
import logging
import pickle
import re
import types
from collections import Counter, OrderedDict, defaultdict
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn

try:
    from torch._weights_only_unpickler import _get_allowed_globals as _torch_safe_globals
except ImportError:  # pragma: no cover - very old / future torch: fall back to a short list
    _torch_safe_globals = None

__all__ = [
    'PickledObjectStub', 'load_checkpoint_file', 'extract_state_dict', 'load_state_dict',
    'load_pretrained', 'convert_to_mmpretrain', 'LoadReport'
]

# Harmless builtins a training snapshot may contain, beyond torch's own allowlist.
_SAFE_BUILTINS = {
    f'builtins.{t.__name__}': t
    for t in (set, frozenset, complex, bytearray, slice, tuple, list, dict, int, float, str,
              bool, bytes)
}
_SAFE_BUILTINS.update({
    'collections.OrderedDict': OrderedDict,
    'collections.Counter': Counter,
    'collections.defaultdict': defaultdict,
})


def _allowed_globals() -> Dict[str, object]:
    if _torch_safe_globals is not None:
        allowed = dict(_torch_safe_globals())
    else:  # pragma: no cover
        allowed = {f'torch._utils.{n}': getattr(torch._utils, n)
                   for n in dir(torch._utils) if n.startswith('_rebuild_')}
        allowed.update({str(t): t for t in vars(torch).values() if isinstance(t, torch.dtype)})
        allowed.update({'torch.Size': torch.Size, 'torch.device': torch.device,
                        'torch.nn.parameter.Parameter': nn.Parameter})
    allowed.update(_SAFE_BUILTINS)
    return allowed


class PickledObjectStub(dict):
    """Inert stand-in for an object of a class the restricted unpickler does not resolve.

    It is a dict (a yacs ``CfgNode`` is one, so its items stay readable); constructor
    arguments, pickled state and list items are kept in attributes. ``pickled_class``
    says what the file referred to.
    """
    pickled_class = '?'

    def __init__(self, *args, **kwargs):  # whatever the pickle passes, nothing runs
        super().__init__()
        self.__dict__['args'] = args

    def __setstate__(self, state):
        self.__dict__['state'] = state

    def append(self, item):
        self.__dict__.setdefault('items', []).append(item)

    def extend(self, items):
        self.__dict__.setdefault('items', []).extend(items)

    def __repr__(self):
        return f'<stub of {self.pickled_class} {dict.__repr__(self)}>'


_stub_classes: Dict[str, type] = {}


def _stub_class(full_name: str) -> type:
    if full_name not in _stub_classes:
        name = full_name.rsplit('.', 1)[-1]
        _stub_classes[full_name] = type(name, (PickledObjectStub, ),
                                        {'pickled_class': full_name})
    return _stub_classes[full_name]


def _restricted_pickle_module(stubbed: set) -> types.ModuleType:
    """A pickle-like module for ``torch.load(pickle_module=...)`` whose Unpickler resolves
    only allowlisted globals and turns every other one into a stub class (names recorded
    in ``stubbed``)."""
    allowed = _allowed_globals()

    class RestrictedUnpickler(pickle.Unpickler):

        def find_class(self, module, name):
            full_name = f'{module}.{name}'
            if full_name in allowed:
                return allowed[full_name]
            stubbed.add(full_name)
            return _stub_class(full_name)

    module = types.ModuleType('msvmamba_restricted_pickle')
    module.Unpickler = RestrictedUnpickler
    module.load = lambda f, **kwargs: RestrictedUnpickler(f, **kwargs).load()
    module.__dict__.update(
        {k: getattr(pickle, k)
         for k in ('UnpicklingError', 'HIGHEST_PROTOCOL', 'DEFAULT_PROTOCOL')})
    return module


def load_checkpoint_file(path: str, map_location='cpu') -> Tuple[object, List[str]]:
    """Unpickle a checkpoint file without running code named by it (see module doc).

    Args:
        path (str): Local path, or any URI mmengine's file backends handle (if installed).
        map_location: As for ``torch.load``. Defaults to 'cpu'.

    Returns:
        tuple: (the unpickled object, sorted names of the classes replaced by stubs).
    """
    stubbed: set = set()
    module = _restricted_pickle_module(stubbed)
    if '://' in str(path):
        from mmengine.fileio import get_local_path  # remote files need mmengine
        with get_local_path(path) as local:
            obj = torch.load(local, map_location=map_location, weights_only=False,
                             pickle_module=module)
    else:
        obj = torch.load(path, map_location=map_location, weights_only=False,
                         pickle_module=module)
    return obj, sorted(stubbed)


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


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
    if 'model' in ckpt or 'model_ema' in ckpt:
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
        examples = ', '.join(list(state_dict)[:3])
        raise KeyError(f'no key of {source} starts with prefix {prefix!r} (keys look like '
                       f'{examples}); official checkpoints need no prefix')
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


def _log(message: str, level: int):
    try:
        from mmengine.logging import print_log
    except ImportError:  # pragma: no cover
        logging.getLogger(__name__).log(level, message)
    else:
        print_log(message, logger='current', level=level)


class LoadReport(NamedTuple):
    """What :func:`load_state_dict` did."""
    loaded: List[str]
    missing: List[str]
    unexpected: List[str]
    message: str


def load_state_dict(module: nn.Module, state_dict: Dict[str, torch.Tensor],
                    source: str = 'checkpoint') -> LoadReport:
    """Load by name, non-strict, with a shape check and one summary.

    A shape mismatch raises (naming every mismatching key with both shapes) before
    anything is loaded. Missing and unexpected keys are logged in one warning.
    """
    own = module.state_dict()
    mismatches = [f'  {k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
                  for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    if mismatches:
        raise RuntimeError(f'shape mismatch loading {source} into '
                           f'{type(module).__name__} (wrong arch?):\n' + '\n'.join(mismatches))
    result = module.load_state_dict(state_dict, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    loaded = [k for k in state_dict if k in own]
    lines = [f'{type(module).__name__}: loaded {len(loaded)}/{len(own)} tensors from {source}']
    if missing:
        lines.append(f'  missing in checkpoint (kept as initialised): '
                     f'{_summarise_keys(missing)}')
    if unexpected:
        lines.append(f'  unexpected, ignored: {_summarise_keys(unexpected)}')
    message = '\n'.join(lines)
    _log(message, logging.WARNING if missing or unexpected else logging.INFO)
    return LoadReport(loaded, missing, unexpected, message)


def load_pretrained(module: nn.Module,
                    checkpoint: str,
                    prefix: Optional[str] = None,
                    use_ema: bool = False,
                    map_location='cpu') -> LoadReport:
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
    """
    ckpt, stubbed = load_checkpoint_file(checkpoint, map_location)
    state_dict, where = extract_state_dict(ckpt, use_ema, source=checkpoint)
    if prefix:
        state_dict = _strip_prefix(state_dict, prefix, checkpoint)
    if hasattr(module, 'adapt_state_dict'):
        state_dict = module.adapt_state_dict(state_dict)
    source = f'{checkpoint} ({where}{", prefix " + repr(prefix) if prefix else ""})'
    if stubbed:
        _log(f'{checkpoint}: non-tensor objects read as inert stubs: {", ".join(stubbed)}',
             logging.DEBUG)
    return load_state_dict(module, state_dict, source)


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
