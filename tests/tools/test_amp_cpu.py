"""``tools/train.py --amp`` without a GPU: bf16 autocast on the CPU (issue 22, item 3).

* one training step of a small MSVMamba classifier under
  :class:`projects.msvmamba_mm.cpu_amp.CPUBf16OptimWrapper` against float32, both
  against a float64 copy of the same step (in-process);
* ``--amp`` on a machine without a GPU builds that wrapper (config preparation);
* a 2-iteration ``tools/train.py --amp`` run of the tests' 8-channel ResNet classifier
  ends with finite losses.

Runtime on the shared 2-vCPU Xeon (2026-12-07): 12 s, 9 s of it the train.py run. The
issue's "quick start with --amp learns" (Mask R-CNN + MSVMamba-Nano, about 2 minutes) is
``tests/tools/test_quick_start.py``'s ``amp`` case.
"""
import argparse
import copy
import math
import re

import pytest
import torch
from backbone_utils import SMALL_MASTER
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper

from projects.msvmamba import MSVMamba
from projects.msvmamba_mm import cli, distributed
from projects.msvmamba_mm.cpu_amp import CPUBf16OptimWrapper
from projects.msvmamba_mm.errors import UserError

no_accelerator = pytest.mark.skipif(distributed.has_accelerator(),
                                    reason='checks the CPU-only choice of --amp')


class _Classifier(torch.nn.Module):
    """Small MSVMamba (dims 16, one block a stage, no stochastic depth so that the
    steps compare) + global pooling + a linear head."""

    def __init__(self):
        super().__init__()
        self.backbone = MSVMamba(SMALL_MASTER, drop_path_rate=0.)
        self.head = torch.nn.Linear(128, 10)

    def forward(self, x):
        return self.head(self.backbone(x)[-1].to(self.head.weight.dtype).mean((2, 3)))


def _step(model, optim_wrapper, images, labels):
    """Loss and gradients (float64 copies) of one step through ``optim_wrapper``."""
    model.zero_grad()
    with optim_wrapper.optim_context(model):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
    optim_wrapper.backward(loss)
    grads = {name: p.grad.double() for name, p in model.named_parameters()}
    return loss.detach().double(), grads


def _rel(grads, ref):
    """||g - ref|| / ||ref|| over all parameters together, and per tensor."""
    total = math.sqrt(sum(((grads[n] - ref[n])**2).sum().item() for n in ref)
                      / sum((ref[n]**2).sum().item() for n in ref))
    per_tensor = {n: ((grads[n] - ref[n]).norm() / ref[n].norm()).item() for n in ref}
    return total, per_tensor


def test_bf16_training_step_matches_float32():
    torch.manual_seed(0)
    model = _Classifier()
    images, labels = torch.randn(4, 3, 64, 64), torch.tensor([1, 2, 3, 4])
    model64 = copy.deepcopy(model).double()
    sgd = dict(type='SGD', lr=0.1)
    loss64, grads64 = _step(model64, build_optim_wrapper(model64, dict(optimizer=sgd)),
                            images.double(), labels)
    loss32, grads32 = _step(model, build_optim_wrapper(model, dict(optimizer=sgd)),
                            images, labels)
    bf16 = build_optim_wrapper(model, dict(type='CPUBf16OptimWrapper', optimizer=sgd))
    assert isinstance(bf16, CPUBf16OptimWrapper)
    loss16, grads16 = _step(model, bf16, images, labels)
    # parameters and gradients stay float32 (autocast casts weights per op)
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())

    rel32, _ = _rel(grads32, grads64)
    rel16, per_tensor16 = _rel(grads16, grads64)
    # float32 is ~1e-6 from float64 here, so the comparison measures bf16 alone
    assert rel32 < 1e-5
    # bf16 keeps 8 significant bits: each rounded operand is within u = 2**-9 ~ 2e-3,
    # a product of two within 2u, and errors of a few chained layers add up to ~1e-2
    # (measured: loss 2e-4, all gradients together 1.2e-2, the worst tensor 0.14: the
    # last stage's squeeze-excite fc, fed a pooled mean that bf16 rounds). The bounds
    # leave 2x (worst tensor) to 50x (loss).
    assert abs(loss16 - loss64) / loss64 < 1e-2
    assert rel16 < 5e-2, rel16
    worst = max(per_tensor16, key=per_tensor16.get)
    assert per_tensor16[worst] < 0.3, (worst, per_tensor16[worst])
    # and autocast did run in bf16: float32 rounding alone is 1e4x smaller
    assert rel16 > 100 * rel32


def _train_args(**kwargs):
    args = dict(config='configs/x.py', work_dir=None, resume=None, amp=False,
                auto_scale_lr=False)
    return argparse.Namespace(**{**args, **kwargs})


@no_accelerator
def test_amp_without_gpu_builds_the_bf16_wrapper():
    cfg = cli.prepare_train_config(Config(dict(optim_wrapper=dict(optimizer=dict(
        type='SGD', lr=0.1)))), _train_args(amp=True))
    assert cfg.optim_wrapper.type == 'CPUBf16OptimWrapper'
    assert cfg.optim_wrapper.dtype == 'bfloat16'
    wrapper = build_optim_wrapper(torch.nn.Linear(2, 2), cfg.optim_wrapper)
    assert isinstance(wrapper, CPUBf16OptimWrapper)
    # a GPU config that already asks for AmpOptimWrapper: its loss scale is dropped
    cfg = cli.prepare_train_config(Config(dict(optim_wrapper=dict(
        type='AmpOptimWrapper', loss_scale='dynamic', optimizer=dict(type='SGD', lr=0.1)))),
        _train_args(amp=True))
    assert cfg.optim_wrapper.type == 'CPUBf16OptimWrapper'
    assert 'loss_scale' not in cfg.optim_wrapper
    with pytest.raises(UserError, match=r'optim_wrapper.dtype=float16; remove it or set it '
                       'to bfloat16'):
        cli.prepare_train_config(Config(dict(optim_wrapper=dict(dtype='float16'))),
                                 _train_args(amp=True))


SMALL_RESNET = '''
_base_ = [{base!r}]
model = dict(backbone=dict(stem_channels=8, base_channels=8), head=dict(in_channels=64))
'''


@no_accelerator
def test_train_amp_on_cpu(run_tool, workspace, tool_configs, tmp_path):
    config = tmp_path / 'small_resnet.py'
    config.write_text(SMALL_RESNET.format(base=tool_configs['cls']))
    work_dir = tmp_path / 'work'
    run = run_tool('train.py', config, '--amp', '--work-dir', work_dir).check()
    dumped = Config.fromfile(str(work_dir / 'small_resnet.py'))
    assert dumped.optim_wrapper.type == 'CPUBf16OptimWrapper'
    losses = [float(v) for v in re.findall(r'Iter\(train\) .* loss: (\S+)', run.out)]
    assert losses and all(math.isfinite(v) for v in losses), run.out[-3000:]
