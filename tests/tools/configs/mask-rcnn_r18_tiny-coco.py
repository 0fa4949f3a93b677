# Stock mmdet Mask R-CNN (ResNet-18, random init) on the tiny COCO-format shapes dataset
# (tools/dataset_converters/make_tiny_datasets.py coco -> data/tiny_coco). 2 iterations,
# one validation, a checkpoint every iteration: for tests of the tools on a CPU.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', './_tiny_run.py']
custom_imports = dict(imports=['projects.msvmamba_mm'], allow_failed_imports=False)

data_root = 'data/tiny_coco/'
classes = ('circle', 'square', 'triangle')
img_scale = (128, 128)

model = dict(
    backbone=dict(depth=18, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512]),
    roi_head=dict(
        bbox_head=dict(num_classes=len(classes)),
        mask_head=dict(num_classes=len(classes))),
    # fewer proposals and RoIs than for COCO: a few shapes per 128 px image
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=200, max_per_img=100),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(
        rpn=dict(nms_pre=200, max_per_img=100),
        rcnn=dict(max_per_img=20)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
_dataset = dict(data_root=data_root, metainfo=dict(classes=classes))
train_dataloader = dict(
    batch_size=2, **_base_.tiny_loader, dataset=dict(**_dataset, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=2, **_base_.tiny_loader, dataset=dict(**_dataset, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=2, val_interval=2)
param_scheduler = _base_.tiny_param_scheduler
optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=1e-4,
                                    weight_decay=0.05))
default_hooks = _base_.tiny_default_hooks
log_processor = dict(by_epoch=False)
randomness = _base_.tiny_randomness
