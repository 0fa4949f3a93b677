# MSVMamba ImageNet-1k recipe (docs/architecture.md §7; upstream main.py/config.py, timm):
# 300 epochs, 20 warm-up epochs, per-iteration cosine, total batch 1024.
#   lr      = BASE_LR 5e-4 x 1024 / 512 = 1e-3 (v3 Base: 3e-4 -> 6e-4)
#   warm-up = 5e-7 x 2 = 1e-6 = 1e-3 x lr  -> LinearLR start_factor 1e-3
#   min lr  = 5e-6 x 2 = 1e-5 = 1e-2 x lr  -> eta_min_ratio 1e-2 (scales with
#             auto_scale_lr like upstream's linear scaling of MIN_LR)
# AdamW (eps 1e-8, betas (0.9, 0.999), wd 0.05); no weight decay for 1-D
# parameters (biases, norms, Ds) = upstream's `ndim == 1 or name.endswith('.bias')`
# rule (A_logs, dt_projs_bias, dt_projs_weight, x_proj_weight ARE decayed).
# Grad-norm clipping 5.0, AMP on, EMA of the weights with decay 0.9999.
_base_ = 'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py'

optim_wrapper = dict(
    # AMP needs a GPU: on a CPU-only machine pass
    # --cfg-options optim_wrapper.type=OptimWrapper
    type='AmpOptimWrapper',
    optimizer=dict(
        type='AdamW', lr=1e-3, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    paramwise_cfg=dict(_delete_=True, flat_decay_mult=0.0),  # no Swin keys
    clip_grad=dict(max_norm=5.0),
)

param_scheduler = [
    _base_.param_scheduler[0],  # Swin's: LinearLR from 1e-3 x lr over 20 epochs, per iteration
    dict(
        type='CosineAnnealingLR',
        eta_min_ratio=1e-2,
        by_epoch=True,
        begin=20,
        end=300,
        convert_to_iter_based=True),  # Swin's decays per epoch, to an absolute eta_min
]

train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)

# timm ModelEma(decay=0.9999) updated after every optimizer step; mmengine's
# momentum is 1 - decay. Validation/test during training use the EMA weights.
custom_hooks = [dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL')]

# lr above is for 8 GPUs x 128 images; enable with `--auto-scale-lr`.
auto_scale_lr = dict(base_batch_size=1024)
