# Swin/MSVMamba UperNet ADE20K schedule (docs/architecture.md §6.3): AdamW lr 6e-5, betas
# (0.9, 0.999), wd 0.01, no decay for parameters whose name contains 'norm'
# (Swin's absolute_pos_embed / relative_position_bias_table keys match nothing
# in MSVMamba and are left out); LinearLR warm-up from 1e-6 x lr over 1500
# iters, then PolyLR (power 1.0, eta_min 0) to 160k; val + checkpoint every 16k.
_base_ = ['mmseg::_base_/schedules/schedule_160k.py', '../runtime/long_run_hooks.py']

optim_wrapper = dict(
    _delete_=True,  # drop mmseg's SGD
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}),
)

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(
        type='PolyLR',
        eta_min=0.0,
        power=1.0,
        by_epoch=False,
        begin=1500,
        end=160000),
]

train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000, val_interval=16000)

# lr above is for 16 images in total (8 GPUs x 2); `--auto-scale-lr` rescales it
# (mmseg's own bases set no auto_scale_lr, so --auto-scale-lr needs this line).
auto_scale_lr = dict(enable=False, base_batch_size=16)

# the hooks of ../runtime/long_run_hooks.py (mmseg keeps default_hooks in its schedules,
# not its runtime): atomic checkpoints, checkpoint-and-exit on a preemption signal, a
# stop on nan/inf
default_hooks = _base_.long_run_hooks
