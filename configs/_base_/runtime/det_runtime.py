# mmdet's default runtime with our checkpoint hook: checkpoints are written atomically
# and --resume falls back past a damaged latest one, so --resume is always safe to pass
# (projects/msvmamba_mm/checkpoints.py). Every detection config inherits it.
_base_ = 'mmdet::_base_/default_runtime.py'

default_hooks = dict(checkpoint=dict(type='PreemptionSafeCheckpointHook'))
