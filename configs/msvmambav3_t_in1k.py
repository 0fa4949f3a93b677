# MSVMambav3-Tiny (upstream branch v2, NeurIPS 2024 "updated experiments"),
# ImageNet-1k, same recipe as ./msvmamba_t_in1k.py (8 GPUs x 128 images,
# lr 1e-3). Paper: top-1 83.0, 32M params, 5.0 GFLOPs.
_base_ = './msvmamba_t_in1k.py'

model = dict(
    backbone=dict(arch='v3_tiny', drop_path_rate=0.2),
    head=dict(in_channels=768))
