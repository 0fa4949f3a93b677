# UperNet, MSVMambav3-Base (widths 128..1024), ADE20K 512x512 160k. No published
# result. Drop path 0.6: VMamba's upernet_vssm_4xb4-160k_ade20k-512x512_base.py
# (lr 6e-5 there too). All else as ./upernet_msvmambav3_t_160k_ade20k.py.
_base_ = ['./upernet_msvmambav3_t_160k_ade20k.py', './_base_/variants/msvmambav3_base.py']

model = dict(
    backbone=dict(_base_.variant.backbone, drop_path_rate=0.6),
    decode_head=dict(in_channels=_base_.variant.widths),
    auxiliary_head=dict(in_channels=_base_.variant.widths[2]))  # 4C: stage-3 output
