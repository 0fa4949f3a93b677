# mmpretrain's default runtime with the hooks of ./long_run_hooks.py (atomic checkpoints,
# checkpoint-and-exit on a preemption signal, a stop on nan/inf). Every classification
# config inherits it.
_base_ = ['mmpretrain::_base_/default_runtime.py', './long_run_hooks.py']

default_hooks = _base_.long_run_hooks
