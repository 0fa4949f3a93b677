# Stock mmseg UperNet (ResNet-18-V1c, random init, SyncBN as shipped) on the tiny
# ADE20K-style shapes dataset (make_tiny_datasets.py ade20k -> data/tiny_ade20k).
# 2 iterations, one validation, a checkpoint every iteration: for tests on a CPU.
_base_ = ['mmseg::upernet/upernet_r18_4xb4-80k_ade20k-512x512.py', './_tiny_run.py']
custom_imports = dict(imports=['projects.msvmamba_mm'], allow_failed_imports=False)

data_root = 'data/tiny_ade20k'
crop_size = (64, 64)
img_scale = (128, 128)

model = dict(
    pretrained=None,
    data_preprocessor=dict(size=crop_size),
    decode_head=dict(channels=128),
    auxiliary_head=dict(channels=64))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=img_scale, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=2, **_base_.tiny_loader,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, **_base_.tiny_loader,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=2)
param_scheduler = _base_.tiny_param_scheduler
optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=1e-4,
                                    weight_decay=0.01))
default_hooks = _base_.tiny_default_hooks
randomness = _base_.tiny_randomness
