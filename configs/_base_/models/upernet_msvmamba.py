# UperNet (+ FCN auxiliary head on stage 3) with an MSVMamba backbone (Tiny
# widths by default), 150 ADE20K classes. Heads, SyncBN, losses (CE 1.0 / 0.4),
# data preprocessor and test mode 'whole' come from mmseg's UperNet-Swin model.
_base_ = ['mmseg::_base_/models/upernet_swin.py', './msvmamba_dense_backbone.py']

model = dict(
    pretrained=None,
    backbone=_base_.dense_backbone,
    decode_head=dict(
        in_channels=[96, 192, 384, 768],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=150,
        align_corners=False),
    auxiliary_head=dict(
        in_channels=384,  # 4C: stage-3 output
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        align_corners=False),
)
