# UperNet, MSVMambav3-Small, ADE20K 512x512 160k. No published result.
# Drop path 0.3: VMamba's upernet_vssm_4xb4-160k_ade20k-512x512_small.py. All else
# as ./upernet_msvmambav3_t_160k_ade20k.py (2 images/GPU, 16 in total, AdamW 6e-5).
_base_ = './upernet_msvmambav3_t_160k_ade20k.py'

model = dict(
    backbone=dict(
        arch='v3_small',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='checkpoints/msvmambav3_small_224.pth')))
