# Quick start (tools/quick_start.py): the paper's Mask R-CNN + MSVMamba-Nano config
# (../mask_rcnn_msvmamba_n_1x.py) trained from scratch on the tiny COCO-format shapes
# dataset that tools/dataset_converters/make_tiny_datasets.py draws (3 classes: circle,
# square, triangle, one colour per class; 128 x 128 images). Only the data, the image
# scale, the number of classes, the schedule and the proposal/RoI counts change; the model
# is the paper's. Not a paper result: it shows the whole train -> test -> visualise loop
# on a CPU in a few minutes.
_base_ = '../mask_rcnn_msvmamba_n_1x.py'

data_root = 'data/quick_start/tiny_coco/'
classes = ('circle', 'square', 'triangle')
img_scale = (128, 128)
max_iters = 300

model = dict(
    # random init: no ImageNet checkpoint needed; no drop path for a short schedule
    backbone=dict(init_cfg=None, drop_path_rate=0.0),
    roi_head=dict(
        bbox_head=dict(num_classes=len(classes)),
        mask_head=dict(num_classes=len(classes))),
    # a few shapes per small image: far fewer proposals and RoIs than for COCO
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=300, max_per_img=100),
        rcnn=dict(sampler=dict(num=64))),
    # keep low-scored detections too: early in training the scores are low, and COCO mAP
    # ranks by score anyway
    test_cfg=dict(
        rpn=dict(nms_pre=300, max_per_img=100),
        rcnn=dict(score_thr=0.01, max_per_img=20)))

# the base pipelines (mmdet's COCO instance ones) at the small scale
train_pipeline = [dict(t, scale=img_scale) if t['type'] == 'Resize' else t
                  for t in _base_.train_pipeline]
test_pipeline = [dict(t, scale=img_scale) if t['type'] == 'Resize' else t
                 for t in _base_.test_pipeline]
_dataset = dict(data_root=data_root, metainfo=dict(classes=classes))
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(**_dataset, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(**_dataset, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

# short iteration-based schedule: AdamW with a high lr (small model, easy data), a few
# warm-up iterations, then cosine decay
train_cfg = dict(
    _delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
    val_interval=max_iters // 2)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=10),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=10, end=max_iters,
         eta_min_ratio=0.05),
]
optim_wrapper = dict(optimizer=dict(lr=1e-3))
auto_scale_lr = dict(base_batch_size=4)

default_hooks = dict(
    # validation metrics logged at their iteration (for the curves), not the epoch
    logger=dict(interval=10, log_metric_by_epoch=False),
    # atomic writes: with max_keep_ckpts=1 a kill while saving keeps the previous one
    checkpoint=dict(type='PreemptionSafeCheckpointHook', by_epoch=False, interval=max_iters,
                    max_keep_ckpts=1))
# saves the untrained (initialised) weights as iter_0.pth before the first iteration,
# so tools/test.py can evaluate the same model before and after training (registered by
# projects.msvmamba_mm, which the base config's custom_imports import)
custom_hooks = [dict(type='SaveInitCheckpointHook')]
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
