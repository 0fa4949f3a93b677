# The hooks every config adds to its package's default_hooks (cls_runtime.py,
# det_runtime.py, ../schedules/upernet_adamw_160k.py: default_hooks = _base_.long_run_hooks),
# so that a long cluster run loses nothing (docs/tools.md, "Long runs on a cluster"):
# - checkpoint: atomic checkpoints, never nan/inf ones; --resume falls back past a damaged
#   latest one, so it is always safe to pass (projects/msvmamba_mm/checkpoints.py);
# - preemption: on SIGTERM/SIGUSR1 the iteration finishes, its checkpoint is saved and the
#   run exits with status 75; --resume continues at the next iteration (preemption.py);
# - divergence: a nan/inf loss or gradient is never applied; the run stops with an error
#   naming the iteration and the last good checkpoint (divergence.py; skip_bad_steps=N
#   skips up to N bad steps in a row instead).
long_run_hooks = dict(
    checkpoint=dict(type='PreemptionSafeCheckpointHook'),
    preemption=dict(type='PreemptionHook'),
    divergence=dict(type='DivergenceGuardHook'))
