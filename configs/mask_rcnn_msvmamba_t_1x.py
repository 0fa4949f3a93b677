# Mask R-CNN + FPN, MSVMamba-Tiny backbone, COCO 2017, 1x (12 epochs).
# Total batch 16 = 4 GPUs x 4 images (upstream's COCO base sets 4/GPU; with
# 8 GPUs use --cfg-options train_dataloader.batch_size=2, as the upstream
# configs' commented line says). lr 1e-4 is for 16 images: `--auto-scale-lr`
# rescales it for other totals (base_batch_size 16, off by default).
# Backbone init: the ImageNet-1k MSVMamba-Tiny checkpoint, drop path 0.2 (see
# ./_base_/models/mask_rcnn_msvmamba_fpn.py and configs/README.md).
# Paper (upstream README): box AP 46.9, mask AP 42.2, 53M params, 252 GFLOPs.
_base_ = [
    './_base_/models/mask_rcnn_msvmamba_fpn.py',
    './_base_/datasets/coco_instance.py',
    './_base_/schedules/mask_rcnn_adamw_1x.py',
    './_base_/runtime/det_runtime.py',
]
