# 3x (36 epochs) variant of ./mask_rcnn_adamw_1x.py: same 1000-iter warm-up,
# x0.1 at epochs 27 and 33.
_base_ = './mask_rcnn_adamw_1x.py'

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    _base_.param_scheduler[0],
    dict(_base_.param_scheduler[1], end=max_epochs, milestones=[27, 33]),
]
