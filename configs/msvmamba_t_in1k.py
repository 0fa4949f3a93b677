# MSVMamba-Tiny (master), ImageNet-1k 224x224 from scratch, 300 epochs.
# Total batch 1024 = 8 GPUs x 128 images (lr 1e-3); other GPU counts:
# add --auto-scale-lr (base_batch_size 1024).
# Paper (arXiv v1 / upstream README): top-1 82.8, 33M params, 4.6 GFLOPs.
_base_ = [
    './_base_/models/msvmamba_in1k.py',
    './_base_/datasets/imagenet_bs128_msvmamba_224.py',
    './_base_/schedules/imagenet_bs1024_adamw_300e.py',
    './_base_/runtime/cls_runtime.py',
]

model = dict(
    backbone=dict(arch='tiny', drop_path_rate=0.2),
    head=dict(in_channels=768),
)

# upstream seeds every rank with 0 + rank and turns cudnn.benchmark on
randomness = dict(seed=0, diff_rank_seed=True)
env_cfg = dict(cudnn_benchmark=True)
