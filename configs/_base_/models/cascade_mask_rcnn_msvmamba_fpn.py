# Cascade Mask R-CNN + FPN with an MSVMamba backbone (Tiny widths by default), in
# the form of the Swin Cascade Mask R-CNN 3x recipe (Swin-Transformer-Object-
# Detection cascade_mask_rcnn_swin_*_giou_4conv1f_adamw_3x_coco.py; mmdet 3.x
# carries the same heads in configs/convnext/cascade-mask-rcnn_convnext-*_fpn_
# 4conv1fc-giou_*-3x_coco.py): each of the 3 stages has a 4-conv + 1-fc box head
# (ConvFCBBoxHead, SyncBN), class-specific regression of decoded boxes with a
# GIoU loss (weight 10), and the usual target stds 0.1/0.2, 0.05/0.1,
# 0.033/0.067. RPN, RoI extractors, mask heads, stage loss weights (1, 0.5,
# 0.25), train/test cfg and data preprocessor: mmdet's Cascade Mask R-CNN
# R-50-FPN model.
_base_ = [
    'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py', './msvmamba_dense_backbone.py'
]

model = dict(
    backbone=_base_.dense_backbone,  # the Tiny one of our Mask R-CNN
    neck=dict(in_channels=[96, 192, 384, 768]),
    roi_head=dict(bbox_head=[
        dict(
            type='ConvFCBBoxHead',
            num_shared_convs=4,
            num_shared_fcs=1,
            in_channels=256,
            conv_out_channels=256,
            fc_out_channels=1024,
            roi_feat_size=7,
            num_classes=80,
            bbox_coder=dict(
                type='DeltaXYWHBBoxCoder',
                target_means=[0., 0., 0., 0.],
                target_stds=[xy, xy, wh, wh]),
            reg_class_agnostic=False,
            reg_decoded_bbox=True,
            norm_cfg=dict(type='SyncBN', requires_grad=True),
            loss_cls=dict(
                type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
        for xy, wh in ((0.1, 0.2), (0.05, 0.1), (0.033, 0.067))
    ]),
)
