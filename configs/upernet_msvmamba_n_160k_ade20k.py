# UperNet, MSVMamba-Nano, ADE20K 512x512 160k; everything else as
# ./upernet_msvmamba_t_160k_ade20k.py (2 images/GPU, 16 in total). Drop path
# 0.3: upstream's Micro/Nano configs inherit it from the Swin segmentation base.
# Upstream ships this config but reports no result (35.7M params, 860 GFLOPs).
_base_ = './upernet_msvmamba_t_160k_ade20k.py'

model = dict(
    backbone=dict(
        arch='nano',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='checkpoints/msvmamba_nano_in1k.pth')),
    decode_head=dict(in_channels=[48, 96, 192, 384]),
    auxiliary_head=dict(in_channels=192))
