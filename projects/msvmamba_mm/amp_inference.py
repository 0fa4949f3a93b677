"""Inference under autocast (``tools/test.py --amp``, ``tools/infer.py --amp``).

Only the features run in reduced precision: :func:`autocast_features` makes a model's
``extract_feat`` (backbone + neck, where nearly all the FLOPs are) run under
``torch.autocast`` and return float32, so the heads, box decoding, NMS and the scores stay
float32 as the OpenMMLab post-processing expects (mmcv's CPU NMS and the inferencers'
numpy conversions take no bf16). On the CPU the dtype is bfloat16, and the backbone's fused
CPU ops stay on under it where the CPU has avx512_bf16 or AMX
(``msvmamba_ops.cpu_fused.why_not_fast_path``); on CUDA float16.
"""
from typing import Any, Callable

import torch
from mmengine.logging import print_log
from torch import nn

from .errors import UserError


def amp_dtype(device: str) -> torch.dtype:
    """The autocast dtype of ``--amp``: float16 on CUDA, bfloat16 on the CPU."""
    return torch.float16 if str(device).startswith('cuda') else torch.bfloat16


def float32_outputs(outputs: Any) -> Any:
    """Floating tensors (alone or in a tuple/list: one per feature level) as float32."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(float32_outputs(o) for o in outputs)
    return outputs


def features_under_autocast(extract_feat: Callable, device: str,
                            dtype: torch.dtype) -> Callable:
    """``extract_feat`` run under ``torch.autocast(device, dtype)``, its features returned
    as float32 (for inference here and for CPU bf16 training, ``cpu_amp``)."""

    def run(*args, **kwargs):
        with torch.autocast(device, dtype=dtype):
            features = extract_feat(*args, **kwargs)
        return float32_outputs(features)

    return run


def autocast_features(model: nn.Module) -> nn.Module:
    """Make ``model.extract_feat`` (of the model itself, or of the one a DDP / test-time
    augmentation wrapper holds as ``module``) run under autocast on its parameters' device
    and return float32 features. Returns ``model``."""
    inner = getattr(model, 'module', model)
    extract = getattr(inner, 'extract_feat', None)
    if extract is None:
        raise UserError(f'--amp: {type(inner).__name__} has no extract_feat (backbone + neck) '
                        'to run in reduced precision; run without --amp')
    device = next(inner.parameters()).device.type
    inner.extract_feat = features_under_autocast(extract, device, amp_dtype(device))
    print_log(f'--amp: backbone + neck under autocast ({amp_dtype(device)} on {device}), '
              'heads in float32', logger='current')
    return model
