# UperNet, MSVMamba-Micro, ADE20K 512x512 160k; everything else as
# ./upernet_msvmamba_t_160k_ade20k.py (2 images/GPU, 16 in total). Drop path
# 0.3: upstream's Micro/Nano configs inherit it from the Swin segmentation base.
# Paper: mIoU 45.1 SS / 45.4 MS, 42M params, 875 GFLOPs.
_base_ = './upernet_msvmamba_t_160k_ade20k.py'

model = dict(
    backbone=dict(
        arch='micro',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='checkpoints/msvmamba_micro_in1k.pth')),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
