# Example of a new experiment derived by inheritance: UperNet + MSVMamba-Micro
# (instead of Tiny) on Cityscapes 512x1024 (instead of ADE20K), 80k iterations
# (instead of 160k), everything else from the ADE20K recipe's bases. Not a paper
# result: see configs/README.md, "New experiments".
_base_ = [
    '../_base_/models/upernet_msvmamba.py',  # UperNet + MSVMamba (ours)
    'mmseg::_base_/datasets/cityscapes.py',  # any dataset mmseg ships
    '../_base_/schedules/upernet_adamw_160k.py',  # AdamW recipe (ours)
    'mmseg::_base_/default_runtime.py',
]

crop_size = (512, 1024)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch='micro',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='checkpoints/msvmamba_micro_in1k.pth')),
    decode_head=dict(in_channels=[64, 128, 256, 512], num_classes=19),
    auxiliary_head=dict(in_channels=256, num_classes=19))

# 80k iterations: shorten the loop and the poly decay, validate every 8k
train_cfg = dict(max_iters=80000, val_interval=8000)
param_scheduler = [
    _base_.param_scheduler[0],
    dict(_base_.param_scheduler[1], end=80000),
]
# (the schedule base already sets our PreemptionSafeCheckpointHook)
default_hooks = dict(checkpoint=dict(interval=8000))
