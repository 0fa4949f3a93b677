# RetinaNet + FPN (P3-P7), MSVMamba-Nano, COCO 1x. No published result. Drop path
# 0.2 and init as ./mask_rcnn_msvmamba_n_1x.py; all else (AdamW 1e-4, 16 = 4 GPUs
# x 4) as ./retinanet_msvmamba_m_1x.py.
_base_ = ['./retinanet_msvmamba_m_1x.py', './_base_/variants/msvmamba_nano.py']

model = dict(backbone=_base_.variant.backbone, neck=dict(in_channels=_base_.variant.widths[1:]))
