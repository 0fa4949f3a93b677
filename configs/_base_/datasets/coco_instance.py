# COCO 2017 instance segmentation, single-scale 1x pipeline (Resize (1333, 800)
# keep_ratio, RandomFlip 0.5; test Resize (1333, 800)) from mmdet. Upstream
# MSVMamba's own copy of this base sets 4 images and 4 workers per GPU
# (mmdet's default is 2/2); so do we.
_base_ = 'mmdet::_base_/datasets/coco_instance.py'

train_dataloader = dict(batch_size=4, num_workers=4)
