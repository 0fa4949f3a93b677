# UperNet, MSVMamba-Nano, ADE20K 512x512 160k; everything else as
# ./upernet_msvmamba_t_160k_ade20k.py (2 images/GPU, 16 in total). Drop path
# 0.3: upstream's Micro/Nano configs inherit it from the Swin segmentation base.
# Upstream ships this config but reports no result (35.7M params, 860 GFLOPs).
_base_ = ['./upernet_msvmamba_t_160k_ade20k.py', './_base_/variants/msvmamba_nano.py']

model = dict(
    backbone=dict(_base_.variant.backbone, drop_path_rate=0.3),
    decode_head=dict(in_channels=_base_.variant.widths),
    auxiliary_head=dict(in_channels=_base_.variant.widths[2]))  # 4C: stage-3 output
