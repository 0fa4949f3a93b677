# Stock mmpretrain ResNet-18 classifier (random init) on the tiny ImageNet-style shapes
# dataset (make_tiny_datasets.py imagenet -> data/tiny_imagenet). 2 iterations, one
# validation, a checkpoint every iteration: for tests of the tools on a CPU.
_base_ = ['mmpretrain::resnet/resnet18_8xb32_in1k.py', './_tiny_run.py']
custom_imports = dict(imports=['projects.msvmamba_mm'], allow_failed_imports=False)

data_root = 'data/tiny_imagenet'
classes = ('circle', 'square', 'triangle')

model = dict(head=dict(num_classes=len(classes), topk=(1, )))
data_preprocessor = dict(num_classes=len(classes))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=64),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=64, edge='short'),
    dict(type='CenterCrop', crop_size=64),
    dict(type='PackInputs'),
]
_dataset = dict(data_root=data_root, metainfo=dict(classes=classes))
train_dataloader = dict(
    batch_size=4, **_base_.tiny_loader, dataset=dict(**_dataset, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, **_base_.tiny_loader, dataset=dict(**_dataset, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator

train_cfg = dict(_delete_=True, by_epoch=False, max_iters=2, val_interval=2)
param_scheduler = _base_.tiny_param_scheduler
optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=1e-3,
                                    weight_decay=0.05))
default_hooks = _base_.tiny_default_hooks
log_processor = dict(by_epoch=False)
randomness = _base_.tiny_randomness

# test-time augmentation (tools/test.py --tta): average over a flip
tta_model = dict(type='AverageClsScoreTTA')
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug',
         transforms=[
             [dict(type='ResizeEdge', scale=64, edge='short')],
             [dict(type='CenterCrop', crop_size=64)],
             [dict(type='RandomFlip', prob=0.),
              dict(type='RandomFlip', prob=1.)],
             [dict(type='PackInputs')],
         ]),
]
