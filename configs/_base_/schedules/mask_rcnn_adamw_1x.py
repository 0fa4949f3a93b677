# Swin/MSVMamba Mask R-CNN 1x schedule (docs/architecture.md §6.2): AdamW lr 1e-4, betas
# (0.9, 0.999), wd 0.05, no decay for parameters whose name contains 'norm'
# (substring match: block norm/norm2, out_norm, outnorm*, downsample.norm; biases,
# A_logs, Ds and patch_embed.2 ARE decayed, as upstream). Swin's
# absolute_pos_embed / relative_position_bias_table keys match no MSVMamba
# parameter and are left out. LinearLR warm-up 1000 iters from 1e-3 x lr, then
# x0.1 at epochs 8 and 11 of 12. No grad clipping, no AMP (as upstream).
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'

max_epochs = 12
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[8, 11],
        gamma=0.1),
]

optim_wrapper = dict(
    _delete_=True,  # drop mmdet's SGD
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}),
)

# lr above is for 16 images in total; `--auto-scale-lr` rescales it.
auto_scale_lr = dict(enable=False, base_batch_size=16)
