# UperNet, MSVMamba-Micro, ADE20K 512x512 160k; everything else as
# ./upernet_msvmamba_t_160k_ade20k.py (2 images/GPU, 16 in total). Drop path
# 0.3: upstream's Micro/Nano configs inherit it from the Swin segmentation base.
# Paper: mIoU 45.1 SS / 45.4 MS, 42M params, 875 GFLOPs.
_base_ = ['./upernet_msvmamba_t_160k_ade20k.py', './_base_/variants/msvmamba_micro.py']

model = dict(
    backbone=dict(_base_.variant.backbone, drop_path_rate=0.3),
    decode_head=dict(in_channels=_base_.variant.widths),
    auxiliary_head=dict(in_channels=_base_.variant.widths[2]))  # 4C: stage-3 output
