# COCO instance segmentation with the multi-scale + random-crop training
# pipeline of the Swin/MSVMamba 3x recipe (augmentation from DETR/Sparse R-CNN):
# either RandomChoiceResize to a shorter side in 480..800 (step 32, long side
# <= 1333), or RandomChoiceResize {400, 500, 600} -> RandomCrop absolute_range
# (384, 600) -> RandomChoiceResize 480..800. Test pipeline unchanged.
_base_ = './coco_instance.py'

ms_scales = [(s, 1333) for s in range(480, 801, 32)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=ms_scales, keep_ratio=True)],
            [
                dict(
                    type='RandomChoiceResize',
                    scales=[(400, 1333), (500, 1333), (600, 1333)],
                    keep_ratio=True),
                dict(
                    type='RandomCrop',
                    crop_type='absolute_range',
                    crop_size=(384, 600),
                    allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=ms_scales, keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
