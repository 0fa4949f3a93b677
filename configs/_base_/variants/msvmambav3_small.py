# MSVMambav3-Small for the det/seg configs (_base_.variant): ImageNet-1k weights, widths C..8C
variant = dict(
    backbone=dict(
        arch='v3_small', init_cfg=dict(checkpoint='checkpoints/msvmambav3_small_224.pth')),
    widths=[96, 192, 384, 768])
