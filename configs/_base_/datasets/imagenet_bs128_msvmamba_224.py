# ImageNet-1k, 224x224, the timm/DeiT augmentation of the MSVMamba recipe:
# RandomResizedCrop 224 (bicubic, pillow), RandomFlip 0.5,
# RandAugment rand-m9-mstd0.5-inc1 (timm_increasing, 2 ops, magnitude 9/10,
# std 0.5), RandomErasing p 0.25 ('rand' with fill_std approximates timm's
# per-pixel 'pixel' mode); test: short side 256 (bicubic) -> CenterCrop 224.
# All of that is mmpretrain's Swin-224 dataset; only the batch differs:
# 128 images per GPU (the upstream README trains with 8 GPUs x 128 = 1024).
_base_ = 'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py'

train_dataloader = dict(batch_size=128)
