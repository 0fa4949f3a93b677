# COCO 2017 detection (boxes only), single-scale 1x pipeline (Resize (1333, 800)
# keep_ratio, RandomFlip 0.5) from mmdet, with 4 images and 4 workers per GPU as
# ./coco_instance.py, so every COCO config here means 16 images on 4 GPUs.
_base_ = 'mmdet::_base_/datasets/coco_detection.py'

train_dataloader = dict(batch_size=4, num_workers=4)
