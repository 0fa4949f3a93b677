# MSVMambav3-Base, ImageNet-1k, recipe of ./msvmambav3_t_in1k.py with a lower
# lr: BASE_LR 3e-4 per 512 -> 6e-4 at 8 GPUs x 128 = 1024 (min lr 6e-6 through
# eta_min_ratio 1e-2, warm-up from 6e-7). Paper: top-1 84.4, 91M, 16.3 GFLOPs.
_base_ = './msvmambav3_t_in1k.py'

model = dict(
    backbone=dict(arch='v3_base', drop_path_rate=0.5),
    head=dict(in_channels=1024))
optim_wrapper = dict(optimizer=dict(lr=6e-4))
