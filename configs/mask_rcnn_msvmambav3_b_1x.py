# Mask R-CNN + FPN, MSVMambav3-Base (widths 128..1024), COCO 1x. No published result.
# Drop path 0.6: VMamba's Mask R-CNN Base (detection/configs/vssm1/
# mask_rcnn_vssm_fpn_coco_base.py); lr stays 1e-4 there. That file trains with 1
# image/GPU x 16 GPUs ("too big"): the total, 16, is ours too (4 GPUs x 4; with less
# memory use --cfg-options train_dataloader.batch_size=1 on 16 GPUs, or 2 on 8).
# Everything else as ./mask_rcnn_msvmambav3_t_1x.py.
_base_ = ['./mask_rcnn_msvmambav3_t_1x.py', './_base_/variants/msvmambav3_base.py']

model = dict(
    backbone=dict(_base_.variant.backbone, drop_path_rate=0.6),
    neck=dict(in_channels=_base_.variant.widths))
