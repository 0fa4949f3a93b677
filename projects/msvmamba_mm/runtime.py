"""Fixes that make the pinned OpenMMLab stack (mmengine 0.10.7, mmcv 2.1.0, mmdet 3.3.0,
mmseg 1.2.2, mmpretrain 1.2.0) work on torch >= 2.6, applied by
:func:`apply_stack_fixes` when ``projects.msvmamba_mm`` is imported (by the tools, and by
any config through ``custom_imports``).

Checkpoints under ``torch.load(weights_only=True)``
    torch >= 2.6 loads with ``weights_only=True`` unless told otherwise, and mmengine
    0.10.7 never says otherwise (``runner/checkpoint.py``: ``load_from_local``,
    ``load_from_http``, ...; ``Runner.load_checkpoint`` and ``Runner.resume`` go through
    them). mmengine's own checkpoints are not plain tensors, so loading them (``--resume``,
    ``load_from``, ``tools/test.py``) failed with "Weights only load failed ... Unsupported
    global". What a checkpoint of the Runner holds besides tensors and builtins:

    * ``message_hub.log_scalars``: :class:`mmengine.logging.HistoryBuffer` objects, which
      hold numpy arrays (``numpy.ndarray``, ``numpy.dtype`` and the classes of dtype
      instances such as ``numpy.dtypes.Float64DType``, ``_reconstruct``);
    * ``message_hub.runtime_info``: numpy scalars (metrics, ``CheckpointHook`` best scores:
      ``numpy ... multiarray.scalar``);
    * ``HistoryBuffer.__getstate__`` also saves its class-level table of statistics
      methods, which pickle writes as ``getattr(HistoryBuffer, 'mean')`` (likewise 'min',
      'max', 'current'): a call of the builtin ``getattr``.

    Fix: allow exactly those globals in torch's restricted unpickler
    (``torch.serialization.add_safe_globals``); ``weights_only`` stays on and nothing in
    mmengine is patched. ``getattr`` itself is not allowed (with it a pickle could reach
    any attribute of an allowed object); the name ``builtins.getattr`` is bound, in the
    restricted unpickler only, to :func:`history_buffer_method`, which returns a
    statistics method of ``HistoryBuffer`` and refuses everything else. numpy moved
    ``numpy.core`` to ``numpy._core`` in 2.0 and a pickle names the module it was written
    with, so both names are allowed for the same two numpy functions.

pkg_resources warning
    mmengine 0.10.7 imports ``pkg_resources`` (it resolves ``mmdet::``-style config bases
    with it), which is why setuptools < 81 is pinned; its deprecation warning, printed
    twice on every start, is silenced when this runs before mmengine is imported.
"""
import importlib
import pickle
import warnings
from typing import List

import numpy as np
import torch

_APPLIED = False


def _numpy_multiarray():
    """numpy's ``multiarray`` module without numpy 2's deprecation warning."""
    try:
        return importlib.import_module('numpy._core.multiarray')  # numpy >= 2
    except ImportError:
        return importlib.import_module('numpy.core.multiarray')  # numpy 1.x


def history_buffer_method(owner, name: str):
    """``getattr`` for the restricted unpickler: only ``HistoryBuffer.<statistics method>``
    (what ``HistoryBuffer.__getstate__`` pickles); anything else is refused."""
    from mmengine.logging import HistoryBuffer
    allowed = {'min', 'max', 'current', 'mean', *HistoryBuffer._statistics_methods}
    if owner is HistoryBuffer and name in allowed:
        return getattr(owner, name)
    raise pickle.UnpicklingError(
        f'weights_only load: getattr({owner!r}, {name!r}) is not allowed (only the '
        'statistics methods of mmengine.logging.HistoryBuffer are)')


def checkpoint_safe_globals() -> List[object]:
    """The non-tensor globals of mmengine checkpoints, in the form
    ``torch.serialization.add_safe_globals`` takes (an object, or (object, pickled name))."""
    from mmengine.logging import HistoryBuffer

    multiarray = _numpy_multiarray()
    found: List[object] = [HistoryBuffer, np.ndarray, np.dtype,
                           (history_buffer_method, 'builtins.getattr')]
    # a dtype is rebuilt as numpy.dtype(...) and then given its state, which torch only
    # does for allowed types: the classes of the dtype instances (numpy.dtypes.*DType)
    found += sorted({type(np.dtype(code)) for code in np.typecodes['All']}, key=str)
    # array and scalar reconstructors, under the module names of numpy 1.x and 2.x
    for func in ('_reconstruct', 'scalar'):
        obj = getattr(multiarray, func)
        found += [(obj, f'{mod}.{func}') for mod in ('numpy.core.multiarray',
                                                     'numpy._core.multiarray')]
    return found


def allow_mmengine_checkpoints() -> None:
    """Let ``torch.load`` (weights_only) read checkpoints written by mmengine's Runner."""
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is None:  # torch < 2.4 loads everything with weights_only=False anyway
        return
    add(checkpoint_safe_globals())


def apply_stack_fixes() -> None:
    """Apply every fix in this module once per process (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    _APPLIED = True
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated',
                            category=UserWarning)
    allow_mmengine_checkpoints()

