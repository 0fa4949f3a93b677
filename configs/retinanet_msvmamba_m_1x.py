# RetinaNet + FPN (P3-P7), MSVMamba-Micro backbone, COCO 2017 detection, 1x (12
# epochs). No published result: upstream has no RetinaNet config.
# Choices and sources:
# - feature levels (backbone stages 1-3, FPN start_level 0, extra convs on the
#   input): mmdet's configs/swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py, see
#   ./_base_/models/retinanet_msvmamba_fpn.py;
# - AdamW as mmdet's PVT RetinaNet (configs/pvt/retinanet_pvt-t_fpn_1x_coco.py, lr
#   1e-4) rather than the SGD of mmdet's Swin RetinaNet, with the settings of our
#   Mask R-CNN 1x (lr 1e-4, wd 0.05, no decay on 'norm' parameters, 1000-iter
#   warm-up, x0.1 at epochs 8 and 11: ./_base_/schedules/mask_rcnn_adamw_1x.py), so
#   RetinaNet and Mask R-CNN rows differ only in the detector;
# - drop path 0.2 and the ImageNet-1k init ('model' weights) of
#   ./mask_rcnn_msvmamba_m_1x.py;
# - total batch 16 = 4 GPUs x 4 as our other COCO configs (mmdet's: 8 x 2);
#   --auto-scale-lr rescales lr for another total.
_base_ = [
    './_base_/models/retinanet_msvmamba_fpn.py',
    './_base_/datasets/coco_detection.py',
    './_base_/schedules/mask_rcnn_adamw_1x.py',
    './_base_/runtime/det_runtime.py',
]
