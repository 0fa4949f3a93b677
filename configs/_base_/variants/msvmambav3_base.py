# MSVMambav3-Base for the det/seg configs (_base_.variant): ImageNet-1k weights, widths C..8C
variant = dict(
    backbone=dict(
        arch='v3_base', init_cfg=dict(checkpoint='checkpoints/msvmambav3_base_224.pth')),
    widths=[128, 256, 512, 1024])
