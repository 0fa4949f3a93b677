# MSVMamba-Micro for the det/seg configs (_base_.variant): ImageNet-1k weights, widths C..8C
variant = dict(
    backbone=dict(
        arch='micro', init_cfg=dict(checkpoint='checkpoints/msvmamba_micro_in1k.pth')),
    widths=[64, 128, 256, 512])
