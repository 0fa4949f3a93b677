# UperNet, MSVMamba-Tiny backbone (drop path 0.2, ImageNet-1k Tiny init),
# ADE20K 512x512, 160k iterations, AdamW 6e-5.
# Batch: 2 images per GPU, the value upstream actually configures (inherited
# from the Swin 8xb2 recipe; its own `batch_size=4` line is commented out).
# The schedule assumes 16 in total = 8 GPUs x 2 (the Swin recipe), which is also
# the 4 GPUs x 4 that upstream's file name '4xb4' states: on 4 GPUs use
# --cfg-options train_dataloader.batch_size=4.
# Test: single scale, Resize (2048, 512) keep_ratio, mode 'whole' (mIoU SS);
# `tools/test.py ... --tta`: scales 0.5-1.75 x flip (mIoU MS), see
# mmseg::_base_/datasets/ade20k.py (tta_pipeline) and its default runtime
# (tta_model = SegTTAModel).
# Paper (upstream README): mIoU 47.8 SS (arXiv v1: 47.6), 65M params, 942 GFLOPs.
_base_ = [
    './_base_/models/upernet_msvmamba.py',
    'mmseg::_base_/datasets/ade20k.py',
    './_base_/schedules/upernet_adamw_160k.py',
    'mmseg::_base_/default_runtime.py',
]

crop_size = (512, 512)
model = dict(data_preprocessor=dict(size=crop_size))
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
