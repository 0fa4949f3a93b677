# UperNet, MSVMambav3-Base (widths 128..1024), ADE20K 512x512 160k. No published
# result. Drop path 0.6: VMamba's upernet_vssm_4xb4-160k_ade20k-512x512_base.py
# (lr 6e-5 there too). All else as ./upernet_msvmambav3_t_160k_ade20k.py.
_base_ = './upernet_msvmambav3_t_160k_ade20k.py'

model = dict(
    backbone=dict(
        arch='v3_base',
        drop_path_rate=0.6,
        init_cfg=dict(checkpoint='checkpoints/msvmambav3_base_224.pth')),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
