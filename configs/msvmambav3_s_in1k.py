# MSVMambav3-Small, ImageNet-1k, recipe of ./msvmambav3_t_in1k.py
# (8 GPUs x 128 images). Paper: top-1 84.1, 50M params, 8.8 GFLOPs.
_base_ = './msvmambav3_t_in1k.py'

model = dict(
    backbone=dict(arch='v3_small', drop_path_rate=0.4),
    head=dict(in_channels=768))
