# RetinaNet + FPN with an MSVMamba backbone (Micro widths by default). Head, anchors,
# focal loss, assigner, test cfg and data preprocessor: mmdet's RetinaNet R-50-FPN
# model. Feature levels as mmdet's Swin RetinaNet (configs/swin/
# retinanet_swin-t-p4-w7_fpn_1x_coco.py): the backbone returns stages 1-3 (strides
# 8, 16, 32), the FPN uses all three (start_level=0) and adds P6/P7 by two stride-2
# convs on the last input (add_extra_convs='on_input', from the R-50 model), i.e.
# P3-P7. Stage 0 is not returned, so outnorm0 is not built (no unused parameter
# under DDP).
_base_ = ['mmdet::_base_/models/retinanet_r50_fpn.py', './msvmamba_dense_backbone.py']

model = dict(
    backbone=dict(
        _base_.dense_backbone,
        arch='micro',
        out_indices=(1, 2, 3),  # 2C, 4C, 8C at strides 8, 16, 32
        init_cfg=dict(_base_.dense_backbone.init_cfg,
                      checkpoint='checkpoints/msvmamba_micro_in1k.pth')),
    neck=dict(in_channels=[128, 256, 512], start_level=0, num_outs=5),
)
