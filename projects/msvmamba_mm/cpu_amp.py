"""Mixed precision training on a CPU: bf16 autocast, no loss scaling.

mmengine 0.10.7's ``AmpOptimWrapper`` asserts a CUDA/NPU/MLU/MUSA device in its
constructor (it always builds a ``GradScaler``), so ``tools/train.py --amp`` on a machine
without one uses :class:`CPUBf16OptimWrapper` instead (``cli._set_amp``).

For the OpenMMLab models (those with ``extract_feat``: classifiers, detectors, segmentors)
only the features, backbone + neck, run under autocast, and return float32 to the heads:
mmcv's CPU ops (NMS, RoIAlign) take no bf16, and box decoding and the losses are better in
float32. Nearly all of the FLOPs are in the features.
"""
from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
from torch import nn

from .amp_inference import features_under_autocast


@OPTIM_WRAPPERS.register_module(force=True)
class CPUBf16OptimWrapper(OptimWrapper):
    """An ``OptimWrapper`` whose forward runs under ``torch.autocast('cpu', bfloat16)``.

    bf16 has float32's exponent range, so gradients neither underflow nor overflow where
    float32 ones would not, and no loss scale is needed (unlike float16). Parameters,
    gradients and optimizer state stay float32: autocast casts the weights per op.

    Args:
        dtype (str or torch.dtype): the autocast dtype; only ``'bfloat16'`` (CPU autocast
            supports nothing else). Defaults to 'bfloat16'.
        **kwargs: the arguments of :class:`mmengine.optim.OptimWrapper` (optimizer,
            accumulative_counts, clip_grad).
    """

    def __init__(self, dtype='bfloat16', **kwargs):
        if dtype not in ('bfloat16', torch.bfloat16):
            raise ValueError(f'CPUBf16OptimWrapper: dtype {dtype} is not supported by CPU '
                             "autocast; use dtype='bfloat16'")
        super().__init__(**kwargs)
        self.cast_dtype = torch.bfloat16

    @contextmanager
    def optim_context(self, model: nn.Module):
        inner = getattr(model, 'module', model)  # DDP keeps the model as .module
        with super().optim_context(model):
            if getattr(inner, 'extract_feat', None) is None:
                with torch.autocast('cpu', dtype=self.cast_dtype):
                    yield
                return
            # features under autocast for the duration of this step, heads in float32
            extract, had_own = inner.extract_feat, 'extract_feat' in vars(inner)
            inner.extract_feat = features_under_autocast(extract, 'cpu', self.cast_dtype)
            try:
                yield
            finally:
                if had_own:
                    inner.extract_feat = extract
                else:
                    del inner.extract_feat

