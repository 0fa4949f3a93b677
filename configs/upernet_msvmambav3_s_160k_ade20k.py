# UperNet, MSVMambav3-Small, ADE20K 512x512 160k. No published result.
# Drop path 0.3: VMamba's upernet_vssm_4xb4-160k_ade20k-512x512_small.py. All else
# as ./upernet_msvmambav3_t_160k_ade20k.py (2 images/GPU, 16 in total, AdamW 6e-5).
_base_ = ['./upernet_msvmambav3_t_160k_ade20k.py', './_base_/variants/msvmambav3_small.py']

model = dict(backbone=dict(_base_.variant.backbone, drop_path_rate=0.3))  # v3 Tiny widths
