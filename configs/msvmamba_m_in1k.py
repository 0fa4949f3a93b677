# MSVMamba-Micro (master), ImageNet-1k, recipe of ./msvmamba_t_in1k.py
# (8 GPUs x 128 images). Paper: top-1 79.8, 12M params, 1.5 GFLOPs.
_base_ = './msvmamba_t_in1k.py'

model = dict(
    backbone=dict(arch='micro', drop_path_rate=0.2),
    head=dict(in_channels=512))
