"""Runtime glue between MSVMamba-MM and the OpenMMLab stack.

Importing this package (the tools do; configs do with
``custom_imports = dict(imports=['projects.msvmamba_mm'], allow_failed_imports=False)``)
applies the fixes of :mod:`.runtime` (mmengine checkpoints under torch >= 2.6) and
registers :class:`.distributed.CPUCapableDDP` in mmengine's ``MODEL_WRAPPERS`` and
:class:`.hooks.SaveInitCheckpointHook`,
:class:`.checkpoints.PreemptionSafeCheckpointHook`, :class:`.preemption.PreemptionHook`
and :class:`.divergence.DivergenceGuardHook` in its ``HOOKS`` (and the ``atomic_local``
file backend), and :class:`.cpu_amp.CPUBf16OptimWrapper` in ``OPTIM_WRAPPERS``.
"""
from .runtime import apply_stack_fixes

apply_stack_fixes()

from .distributed import CPUCapableDDP  # noqa: E402  (registers the model wrapper)
from .hooks import SaveInitCheckpointHook  # noqa: E402  (registers the hook)
from .checkpoints import PreemptionSafeCheckpointHook  # noqa: E402  (hook + file backend)
from .divergence import DivergenceGuardHook  # noqa: E402  (registers the hook)
from .cpu_amp import CPUBf16OptimWrapper  # noqa: E402  (registers the optim wrapper)
from .preemption import PreemptionHook  # noqa: E402  (registers the hook)

__all__ = ['CPUBf16OptimWrapper', 'CPUCapableDDP', 'DivergenceGuardHook', 'PreemptionHook',
           'PreemptionSafeCheckpointHook', 'SaveInitCheckpointHook', 'apply_stack_fixes']
