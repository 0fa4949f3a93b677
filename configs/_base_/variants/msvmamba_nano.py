# MSVMamba-Nano for the det/seg configs (_base_.variant): ImageNet-1k weights, widths C..8C
variant = dict(
    backbone=dict(
        arch='nano', init_cfg=dict(checkpoint='checkpoints/msvmamba_nano_in1k.pth')),
    widths=[48, 96, 192, 384])
