# MSVMamba-Nano (master), ImageNet-1k, recipe of ./msvmamba_t_in1k.py
# (8 GPUs x 128 images). Paper: top-1 77.3, 7M params, 0.9 GFLOPs.
_base_ = './msvmamba_t_in1k.py'

model = dict(
    backbone=dict(arch='nano', drop_path_rate=0.2),
    head=dict(in_channels=384))
