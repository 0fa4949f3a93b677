"""MSVMamba: Multi-Scale VMamba backbone (arXiv 2405.14174, NeurIPS 2024).

One backbone class, :class:`MSVMamba`, builds both public architectures:

* the ``master`` branch models (Nano / Micro / Tiny), used for the paper's classification,
  detection and segmentation numbers;
* the ``v2`` branch "MSVMambav3" models (v3 Tiny / Small / Base), classification only.

Their state-dict names and shapes are those of the official checkpoints, so released
weights load by name (see ``checkpoint.py`` for reading the official files).

Memory layout. Upstream master runs channel-last tensors and v2 channel-first ones; the
math (and every weight) is the same, so this file keeps ONE layout for both: the residual
stream is channel-last ``(B, H, W, C)`` (LayerNorm and linear layers work on the last dim
without copies; depthwise convs run on its channels_last views, their fastest CPU layout).
The only layout changes are the ones the selective scan forces: in each token mixer the
scan inputs become channel-major ``(B, E, L)`` sequences once (a copy, or for the low-res
branch the gather that also orders the directions) and the outputs return to token-major
once (in the LayerNorm / merge that follows).
"""
import copy
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch.nn.modules import module as module_hooks

from msvmamba_ops import cpu_fused, selective_scan
from msvmamba_ops.graph_mode import exporting
from msvmamba_ops.scan_order import DIRECTIONS, scan_indices

from .checkpoint import load_pretrained

try:  # The backbone also works as a plain torch module (e.g. on machines without mmengine).
    from mmengine.model import BaseModule
except ImportError:  # pragma: no cover - exercised only without mmengine

    class BaseModule(nn.Module):
        """Minimal stand-in for ``mmengine.model.BaseModule``: keeps ``init_cfg``."""

        def __init__(self, init_cfg=None):
            super().__init__()
            self.init_cfg = copy.deepcopy(init_cfg)

        def init_weights(self):
            pass


_MASTER = dict(
    stem='conv4x4',  # upstream patch-embed "v1": 4x4/s4 conv + LN
    downsample='patch_merging',  # upstream "v1": Swin PatchMerging2D
    ssm_ratio=2.0,
    ffn_ratio=2.0,
    ffn_norm='pre',
    ssm_gate=True,
    out_norm='per_branch',
    upsample='bilinear',
    low_res_group=0,
)
_V3 = dict(
    stem='conv3x3x2',  # upstream patch-embed "v2": two 3x3/s2 convs
    downsample='conv3x3',  # upstream "v3": 3x3/s2 conv + LN
    ssm_ratio=1.0,
    ffn_ratio=4.0,
    ffn_norm='post',
    ssm_gate=False,  # forward_type 'vms_noz'
    out_norm='merged',
    upsample='nearest',
    low_res_group=1,
)
_COMMON = dict(d_state=1, dt_rank='auto', se_reduction=8, ms_split=(1, 3), ffn_drop=0.0,
               norm_eps=1e-5)


class ToChannelsLast(nn.Module):
    """(B, C, H, W) -> (B, H, W, C) view. Holds the place of upstream's Permute modules so
    that Sequential indices (and hence checkpoint keys) line up."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class ToChannelsFirst(nn.Module):
    """(B, H, W, C) -> (B, C, H, W) view."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


class DropPath(nn.Module):
    """Stochastic depth per sample, rescaled by 1 / keep_prob (timm semantics).

    Args:
        drop_prob (float): Probability of dropping a sample's residual branch.
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0], ) + (1, ) * (x.dim() - 1)).bernoulli_(keep_prob)
        return x * mask.div_(keep_prob)

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob}'


def depthwise_conv(channels: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """Depthwise k x k conv with zero padding k // 2, applied to channels_last views.

    The weight is stored with channels_last strides, (k*k, 1, k, 1): for an (E, 1, k, k)
    tensor the same memory order as the default, but the strides its gradients arrive with
    (the input is channels_last), so parameter and gradient keep one layout and DDP's
    gradient buckets take them without a copy or a stride warning.
    """
    conv = nn.Conv2d(channels, channels, kernel, stride=stride, padding=kernel // 2,
                     groups=channels)
    conv.weight.data = conv.weight.data.to(memory_format=torch.channels_last)
    return conv


def _writable(fresh: torch.Tensor, other: Optional[torch.Tensor] = None) -> bool:
    """Whether ``fresh``, a temporary of this forward that nothing else reads, may take the
    result of an elementwise op with ``other`` (same dtype, broadcasting into fresh's
    shape): autograd does not track it and no compiler traces the forward."""
    return (not torch.compiler.is_compiling() and not fresh.requires_grad
            and (other is None or other.dtype == fresh.dtype))


# In place pays in the token mixer only: -4 to -5% time of a plain Tiny eval forward (CPU,
# batch 8, 224x224, 2026-11-30, 3 alternating runs); in the ConvFFN and residuals: 0.
def _silu_into(fresh: torch.Tensor) -> torch.Tensor:
    return F.silu(fresh, inplace=_writable(fresh))


def _add_into(fresh: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    return fresh.add_(other) if _writable(fresh, other) else fresh + other


def _mul_into(fresh: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    return fresh.mul_(other) if _writable(fresh, other) else fresh * other


class SqueezeExcite(nn.Module):
    """Channel attention on a channel-last map: avg-pool, Linear-ReLU-Linear, sigmoid.

    Args:
        channels (int): Width of the map.
        reduction (int): Hidden width is ``channels // reduction``. Defaults to 8.
    """

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = channels // reduction
        # Sequential indices 0 and 2 match the checkpoint keys se.fc.0 / se.fc.2.
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False), nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # adaptive_avg_pool2d (rather than mean) is the op upstream uses: it keeps FLOP
        # counts identical and has a channels-last kernel.
        pooled = F.adaptive_avg_pool2d(x.permute(0, 3, 1, 2), 1).flatten(1)
        return x * self.fc(pooled)[:, None, None, :]


class ConvFFN(nn.Module):
    """Feed-forward with a depthwise 3x3 conv residual inside, on a channel-last map.

    ``linear2(drop(GELU(h + dwc(h))))`` with ``h = drop(linear1(x))``. The 1x1 convs are
    stored as Conv2d (as in the checkpoints) but applied as linear layers on the last dim,
    which is the same math without a layout change.

    Args:
        channels (int): Input and output width.
        hidden_channels (int): Expanded width.
        drop (float): Dropout after linear1 and after linear2. Defaults to 0.
    """

    def __init__(self, channels: int, hidden_channels: int, drop: float = 0.0):
        super().__init__()
        self.linear1 = nn.Conv2d(channels, hidden_channels, 1)
        self.linear2 = nn.Conv2d(hidden_channels, channels, 1)
        self.dwc = depthwise_conv(hidden_channels, 3)
        # Identity when the rate is 0 (every released model): not even a call in eval.
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if cpu_fused.fast_path_eligible(self, x):
            return self._fused_forward(x)
        h = self.drop(F.linear(x, self.linear1.weight.flatten(1), self.linear1.bias))
        # The permuted views are channels_last tensors: the conv runs on them directly.
        h = h + self.dwc(h.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.drop(F.linear(F.gelu(h), self.linear2.weight.flatten(1), self.linear2.bias))

    def _fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The CPU inference fast path (eval: no dropout): linear1's bias, the conv, the
        residual and GELU in one fused op. Under bf16 autocast the linears run in bf16 and
        the fused op reads and writes bf16 (computing in float32)."""
        w1, w2 = self.linear1.weight, self.linear2.weight
        if torch.is_autocast_enabled('cpu'):  # the kept bf16 copies, not a cast a forward
            w1, w2 = cpu_fused.bf16_weight(w1), cpu_fused.bf16_weight(w2)
        h = F.linear(x, w1.flatten(1))
        g = cpu_fused.convffn_dwconv_gelu(h, self.linear1.bias, self.dwc.weight, self.dwc.bias)
        return F.linear(g, w2.flatten(1), self.linear2.bias)


class PatchMerging2D(nn.Module):
    """Swin-style 2x2 patch merging on a channel-last map (master downsample).

    Odd heights/widths are zero-padded at the bottom/right. The four sub-grids are
    concatenated in Swin order (even row/even col, odd/even, even/odd, odd/odd), which
    differs from mmcv's ``PatchMerging``.

    Args:
        channels (int): Input width C.
        out_channels (int): Output width (2C in every released model).
        eps (float): LayerNorm epsilon.
    """

    def __init__(self, channels: int, out_channels: int, eps: float = 1e-5):
        super().__init__()
        self.reduction = nn.Linear(4 * channels, out_channels, bias=False)
        self.norm = nn.LayerNorm(4 * channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[1:3]
        # exported graphs pad always (by 0 or 1): the size is symbolic there
        if exporting() or H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                       x[:, 1::2, 1::2]], dim=-1)
        if torch.is_autocast_enabled('cpu') and cpu_fused.fast_path_eligible(
                self, x, supported=x.dtype == torch.float32):
            # under bf16 autocast: the norm writes bf16 for the product (no cast pass), which
            # multiplies with the kept bf16 copy of its weight
            _, x, _ = cpu_fused.residual_layer_norm(x, None, (self.norm.weight, self.norm.bias),
                                                    self.norm.eps)
            return F.linear(x, cpu_fused.bf16_weight(self.reduction.weight))
        return self.reduction(self.norm(x))


def _to_sequence(x: torch.Tensor, directions: Tuple[str, ...]) -> torch.Tensor:
    """(B, E, h, w) map in any memory layout -> contiguous (B, E, k*h*w) scan sequence,
    the k directions concatenated. One pass: a copy or a gather.

    While exporting, the sequence is instead token-major, (B, k*h*w, E) rows gathered from
    the channel-last map, returned as its (B, E, k*h*w) transposed view: the exported
    (chunked) scan runs time-major and transposes it back, which runtimes cancel (ONNX has
    no strided views: every layout change there is a copy)."""
    batch, channels, h, w = x.shape
    if exporting():
        tokens = x.permute(0, 2, 3, 1).flatten(1, 2)
        if directions != ('row', ):
            tokens = tokens.index_select(1, scan_indices(h, w, directions, x.device)[0])
        return tokens.transpose(1, 2)
    if directions == ('row', ):
        return x.contiguous().flatten(2)
    order, _ = scan_indices(h, w, directions, x.device)
    # (B, E, h*w) as a view in either memory layout (flatten(2) would copy a channels_last
    # map first); the gather reads it strided and writes the sequence in one pass.
    tokens = x.permute(0, 2, 3, 1).flatten(1, 2).transpose(1, 2)
    return torch.gather(tokens, 2, order.expand(batch, channels, -1))


def _from_sequence(y: torch.Tensor, directions: Tuple[str, ...], h: int,
                   w: int) -> torch.Tensor:
    """Token-major scan output (B, k*h*w, E) -> (B, h, w, E): every direction put back in
    place, summed over directions (a row gather and a sum: deterministic on every
    device)."""
    if directions == ('row', ):
        return y.unflatten(1, (h, w))
    batch, _, channels = y.shape
    _, merge = scan_indices(h, w, directions, y.device)
    # index_select copies whole token rows (several times faster than a gather with an
    # expanded per-element index); same values.
    gathered = y.index_select(1, merge)
    return gathered.view(batch, h, w, len(directions), channels).sum(3)


class MultiScaleSS2D(nn.Module):
    """Multi-scale 2D selective scan (MS2D), the token mixer of a VSSBlock.

    One scan direction runs on the full-resolution map (after a depthwise 3x3 conv); the
    remaining ones run on a half-resolution map (depthwise 7x7 stride-2 conv of the same
    input) and are concatenated into ONE sequence scanned with ONE shared parameter group,
    so the state flows across the direction boundaries. The low-res result is put back in
    place, summed over directions, upsampled to exactly (H, W) and added to the full-res
    result. Parameters of the two groups are stacked in ``x_proj_weight``,
    ``dt_projs_*`` and in the row blocks of ``A_logs`` / ``Ds``.

    Args:
        channels (int): Block width C (input and output).
        d_state (int): SSM state size N. Defaults to 1.
        ssm_ratio (float): Inner width E = ssm_ratio * C. Defaults to 2.
        dt_rank (int | str): Rank R of the delta projection; 'auto' = ceil(C / 16).
        gate (bool): Multiply the output by SiLU(z), z from a second in_proj half
            (master and v3 'vms'); False is v3 'vms_noz'. Defaults to True.
        out_norm (str): 'per_branch': LayerNorm each branch's tokens before merging
            (master); 'merged': one LayerNorm after merging (v3).
        upsample (str): Interpolation of the low-res result: 'bilinear' (master,
            align_corners=False) or 'nearest' (v3).
        low_res_group (int): Parameter group of the low-res branch: 0 in master, 1 in v3.
        ms_split (tuple[int, int]): Number of scan directions at full and at low resolution,
            taken in the order row, row-reversed, column, column-reversed. Only (1, 3), the
            released setting, is verified against upstream.
        se_reduction (int): Squeeze-excite reduction on the scan output; 0 disables SE.
        norm_eps (float): LayerNorm epsilon. Defaults to 1e-5.
    """

    def __init__(self,
                 channels: int,
                 d_state: int = 1,
                 ssm_ratio: float = 2.0,
                 dt_rank: Union[int, str] = 'auto',
                 gate: bool = True,
                 out_norm: str = 'per_branch',
                 upsample: str = 'bilinear',
                 low_res_group: int = 0,
                 ms_split: Sequence[int] = (1, 3),
                 se_reduction: int = 8,
                 norm_eps: float = 1e-5):
        super().__init__()
        if out_norm not in ('per_branch', 'merged'):
            raise ValueError(f"out_norm must be 'per_branch' or 'merged', got {out_norm!r}")
        if upsample not in ('bilinear', 'nearest'):
            raise ValueError(f"upsample must be 'bilinear' or 'nearest', got {upsample!r}")
        if low_res_group not in (0, 1):
            raise ValueError(f'low_res_group must be 0 or 1, got {low_res_group!r}')
        if (len(ms_split) != 2 or min(ms_split) < 1
                or sum(ms_split) != len(DIRECTIONS)):
            raise ValueError('ms_split must be two positive direction counts summing to 4 '
                             f'(full-res, low-res), got {tuple(ms_split)}')
        inner = int(ssm_ratio * channels)
        self.inner_channels = inner
        self.d_state = d_state
        self.dt_rank = math.ceil(channels / 16) if dt_rank == 'auto' else int(dt_rank)
        self.gate = gate
        self.out_norm_mode = out_norm
        self.upsample_mode = upsample
        self.full_directions = tuple(DIRECTIONS[:ms_split[0]])
        self.low_directions = tuple(DIRECTIONS[ms_split[0]:])
        self.low_res_group = low_res_group
        self.full_res_group = 1 - low_res_group
        groups = 2

        # Registration order follows upstream master (irrelevant for loading by name).
        self.x_proj_weight = nn.Parameter(
            torch.empty(groups, self.dt_rank + 2 * d_state, inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(groups, inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(groups, inner))
        self.A_logs = nn.Parameter(torch.empty(groups * inner, d_state))
        self.Ds = nn.Parameter(torch.empty(groups * inner))
        self.out_norm = nn.LayerNorm(inner, eps=norm_eps)
        self.se = SqueezeExcite(inner, se_reduction) if se_reduction else None
        self.in_proj = nn.Linear(channels, inner * (2 if gate else 1), bias=False)
        self.conv2d = depthwise_conv(inner, 3)
        self.conv2d_b1 = depthwise_conv(inner, 7, stride=2)
        self.out_proj = nn.Linear(inner, channels, bias=False)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 0.001, dt_max: float = 0.1,
                             dt_init_floor: float = 1e-4):
        """Mamba's initialisation of the raw SSM parameters (docs/architecture.md §3.5)."""
        inner = self.inner_channels
        # Same as nn.Linear's default init of each (R + 2N, E) group.
        nn.init.uniform_(self.x_proj_weight, -inner**-0.5, inner**-0.5)
        nn.init.uniform_(self.dt_projs_weight, -self.dt_rank**-0.5, self.dt_rank**-0.5)
        # softplus(dt_projs_bias) is log-uniform in [dt_min, dt_max].
        dt = torch.exp(
            torch.rand_like(self.dt_projs_bias) * (math.log(dt_max) - math.log(dt_min)) +
            math.log(dt_min)).clamp_(min=dt_init_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        # A = -exp(A_logs) = -(1..N) for every channel of both groups.
        self.A_logs.copy_(
            torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand_as(
                self.A_logs))
        self.Ds.fill_(1.0)

    def _ssm_params(self, group: int) -> dict:
        """The scan parameters of group ``group``: x_proj_weight (R + 2N, E), dt_proj_weight
        (E, R), dt_bias (E,), A = -exp(A_log) (E, N) and D (E,); A, D and the delta bias
        stay fp32 under any precision (docs/architecture.md §9.13)."""
        rows = slice(group * self.inner_channels, (group + 1) * self.inner_channels)
        return dict(x_proj_weight=self.x_proj_weight[group],
                    dt_proj_weight=self.dt_projs_weight[group],
                    dt_bias=self.dt_projs_bias[group].float(),
                    A=-torch.exp(self.A_logs[rows].float()), D=self.Ds[rows].float())

    def _scan(self, u: torch.Tensor, group: int) -> torch.Tensor:
        """Selective scan of u (B, E, L) with parameter group ``group``. Returns fp32."""
        rank, n = self.dt_rank, self.d_state
        batch = u.shape[0]
        p = self._ssm_params(group)
        if exporting():
            # Token-major products on the stored weights: the exported scan runs
            # time-major, so their outputs need no transpose, u's transposes cancel, and
            # int8 quantization takes them (ONNX Runtime: 13% faster; docs/deployment.md)
            tokens = u.transpose(1, 2)
            dt, B, C = torch.split(F.linear(tokens, p['x_proj_weight']), [rank, n, n], dim=2)
            delta = F.linear(dt, p['dt_proj_weight']).transpose(1, 2)
            B, C = B.transpose(1, 2), C.transpose(1, 2)
        else:
            # Batched matmuls (the same math as upstream's einsums, faster on CPU, and
            # counted exactly by the bmm FLOP handle at any batch size).
            x_dbl = torch.bmm(p['x_proj_weight'].expand(batch, -1, -1), u)
            dt, B, C = torch.split(x_dbl, [rank, n, n], dim=1)
            delta = torch.bmm(p['dt_proj_weight'].expand(batch, -1, -1), dt)
        # u, delta, B, C keep the activation dtype: the kernels accumulate in fp32 either
        # way, so upstream master's explicit fp32 cast gives the same numbers;
        # out_float=True returns fp32 for the LayerNorm that follows.
        return selective_scan(u, delta, p['A'], B, C, D=p['D'], delta_bias=p['dt_bias'],
                              delta_softplus=True, out_float=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) channel-last, already normalised. Returns (B, H, W, C)."""
        # the fused op's epilogue handles one full-resolution direction
        if cpu_fused.fast_path_eligible(self, x, supported=len(self.full_directions) == 1):
            return self._fused_forward(x)
        H, W = x.shape[1:3]
        inner = self.inner_channels
        # The x and z halves of in_proj as two products, so that x comes out contiguous:
        # its channels_last view feeds the depthwise convs without a copy (and channels_last
        # is the faster depthwise-conv layout on CPU).
        x_in = F.linear(x, self.in_proj.weight[:inner]).permute(0, 3, 1, 2)
        z = F.linear(x, self.in_proj.weight[inner:]) if self.gate else None
        act_dtype = x_in.dtype
        x_full = _silu_into(self.conv2d(x_in))
        # The low-res map comes from the same pre-conv input, in parallel with conv2d.
        x_low = _silu_into(self.conv2d_b1(x_in))
        h, w = x_low.shape[2:]

        # Layout change in: the scan reads channel-major (B, E, L) sequences.
        y_full = self._scan(_to_sequence(x_full, self.full_directions), self.full_res_group)
        y_low = self._scan(_to_sequence(x_low, self.low_directions), self.low_res_group)
        # Layout change out: token-major views; LayerNorm / the merge gathers copy them.
        y_full, y_low = y_full.transpose(1, 2), y_low.transpose(1, 2)
        if self.out_norm_mode == 'per_branch':
            y_full, y_low = self.out_norm(y_full), self.out_norm(y_low)
        y_low = _from_sequence(y_low, self.low_directions, h, w)
        # Upsample to the exact full size (odd sizes: 4x4 -> 7x7), not by a scale factor.
        y_low = F.interpolate(
            y_low.permute(0, 3, 1, 2), size=(H, W), mode=self.upsample_mode,
            **(dict(align_corners=False) if self.upsample_mode == 'bilinear' else {}))
        y = _add_into(y_low.permute(0, 2, 3, 1), _from_sequence(y_full, self.full_directions, H, W))
        if self.out_norm_mode == 'merged':
            y = self.out_norm(y)
        y = y.to(act_dtype)
        if self.se is not None:
            y = self.se(y)
        if z is not None:
            y = _mul_into(y, _silu_into(z))
        return self.out_proj(y)

    def _fused_forward(self, x: torch.Tensor,
                       x_twice: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The CPU inference fast path of :meth:`forward` (one full-resolution direction):
        everything between in_proj and out_proj in two fused
        :func:`~msvmamba_ops.cpu_fused.ms2d_branch` calls, the low-res branch, then the
        full-res branch with the merge epilogue.

        Under bf16 autocast the projections run in bf16 on kept bf16 copies of their
        weights (``cpu_fused.bf16_weight``), squeeze-excite and the fused calls in float32;
        the fused calls read the bf16 scan input and gate and write bf16 for out_proj.
        ``x_twice``: the bf16 rows ``[x, x]`` (B, H, W, 2C) when the caller has them
        (:class:`VSSBlock`'s fused LayerNorm writes them), else they are made here."""
        batch, H, W, _ = x.shape
        inner = self.inner_channels
        autocast = torch.is_autocast_enabled('cpu')
        gate_weight, out_weight = self.in_proj.weight[inner:], self.out_proj.weight
        if autocast:
            # The scan half of in_proj drives the scan (the decays exp(delta * A)). Rounding
            # its weight to bf16 moves the seeded models' logits most (a fixed perturbation
            # that every token sees; rounding the input is noise that averages out), so it
            # multiplies [x, x] with the weight split into bf16 high and low parts: a bf16
            # product over twice the input width, the weight exact to ~16 bits
            # (docs/benchmarks.md has the error split by layer). That pays only where bf16
            # products are several times faster than float32 ones (AMX); elsewhere the
            # product is float32 on the bf16-rounded input.
            x = x.to(torch.bfloat16)
            if cpu_fused.amx_bf16_products():
                if x_twice is None:
                    x_twice = torch.cat([x, x], -1)
                x_in = F.linear(x_twice, cpu_fused.bf16_weight(
                    self.in_proj.weight, (0, inner), split=True))
            else:
                with torch.autocast('cpu', enabled=False):
                    x_in = F.linear(x.float(), self.in_proj.weight[:inner])
            gate_weight = cpu_fused.bf16_weight(self.in_proj.weight, (inner, 2 * inner))
            out_weight = cpu_fused.bf16_weight(out_weight)
        else:
            x_in = F.linear(x, self.in_proj.weight[:inner])
        z = F.linear(x, gate_weight).view(batch, H * W, inner) if self.gate else None
        norm = (self.out_norm.weight, self.out_norm.bias)
        per_branch = self.out_norm_mode == 'per_branch'

        def conv_args(conv: nn.Conv2d) -> dict:
            return dict(conv_weight=conv.weight, conv_bias=conv.bias, stride=conv.stride[0],
                        padding=conv.padding[0])

        low = self.conv2d_b1
        h, w = [(n + 2 * low.padding[0] - low.kernel_size[0]) // low.stride[0] + 1
                for n in (H, W)]
        order, _ = scan_indices(h, w, self.low_directions, x.device)
        y_low, _ = cpu_fused.ms2d_branch(
            x_in, **conv_args(low), order=order, **self._ssm_params(self.low_res_group),
            norm=norm if per_branch else None, eps=self.out_norm.eps)
        y, pooled = cpu_fused.ms2d_branch(
            x_in, **conv_args(self.conv2d), order=None, **self._ssm_params(self.full_res_group),
            norm=norm if per_branch else None, eps=self.out_norm.eps,
            low=y_low.view(batch, h, w, inner), nearest=self.upsample_mode == 'nearest',
            post_norm=None if per_branch else norm, z=z, pool=self.se is not None,
            bf16_out=autocast)
        out_shape = (batch, H, W, self.out_proj.out_features)  # (no -1: batch may be 0)
        if self.se is None:
            return F.linear(y, out_weight).view(out_shape)
        # Squeeze-excite scales the E input channels of out_proj per image: scale whichever
        # is smaller, y (B, H*W, E) or a per-image copy of the weight (B, C, E). Under
        # autocast the scale stays float32: its two small products cost nothing, and
        # rounding it would be the same error on every position of an image (the seeded
        # Tiny's bf16 logits error 1.8e-2 instead of 1.3e-2).
        with torch.autocast('cpu', enabled=False):
            scale = self.se.fc(pooled / (H * W))
        weight = self.out_proj.weight
        if weight.shape[0] < H * W:
            weight = weight[None] * scale[:, None, :]
            return torch.bmm(y, weight.transpose(1, 2)).view(out_shape)
        if y.dtype == torch.bfloat16:
            y = cpu_fused.scale_channels_(y, scale)
        else:
            y = y.mul_(scale[:, None, :])
        return F.linear(y, out_weight).view(out_shape)


class VSSBlock(nn.Module):
    """MSVMamba block on a channel-last map.

    ``x = x + DropPath(op(norm(x)))``, then either ``x = x + DropPath(convFFN(norm2(x)))``
    (pre-norm, master) or ``x = x + DropPath(norm2(convFFN(x)))`` (post-norm, v3).

    Args:
        channels (int): Block width C.
        ssm_cfg (dict): Keyword arguments of :class:`MultiScaleSS2D`.
        ffn_ratio (float): ConvFFN hidden width = ffn_ratio * C.
        ffn_norm (str): 'pre' or 'post' placement of norm2.
        ffn_drop (float): ConvFFN dropout. Defaults to 0 (as every released model).
        drop_path (float): Stochastic-depth rate of both residual branches.
        norm_eps (float): LayerNorm epsilon.
    """

    def __init__(self,
                 channels: int,
                 ssm_cfg: dict,
                 ffn_ratio: float = 2.0,
                 ffn_norm: str = 'pre',
                 ffn_drop: float = 0.0,
                 drop_path: float = 0.0,
                 norm_eps: float = 1e-5):
        super().__init__()
        if ffn_norm not in ('pre', 'post'):
            raise ValueError(f"ffn_norm must be 'pre' or 'post', got {ffn_norm!r}")
        self.ffn_pre_norm = ffn_norm == 'pre'
        self.norm = nn.LayerNorm(channels, eps=norm_eps)
        self.op = MultiScaleSS2D(channels, norm_eps=norm_eps, **ssm_cfg)
        self.drop_path = DropPath(drop_path)
        self.convFFN = ConvFFN(channels, int(ffn_ratio * channels), ffn_drop)
        self.norm2 = nn.LayerNorm(channels, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bf16_fast_path_eligible(x):
            x, y = self.bf16_fused_forward(x)
            return cpu_fused.residual_layer_norm(x, y, None)[0]  # x + y in one pass
        x = x + self.drop_path(self.op(self.norm(x)))
        if self.ffn_pre_norm:
            return x + self.drop_path(self.convFFN(self.norm2(x)))
        return x + self.drop_path(self.norm2(self.convFFN(x)))

    def bf16_fast_path_eligible(self, x: torch.Tensor) -> bool:
        """Whether :meth:`bf16_fused_forward` may run on ``x``: CPU inference under bf16
        autocast where the fused ops serve (``cpu_fused.why_not_fast_path``), on the float32
        stream that :class:`MSVMambaStage` keeps, and no forward hook on the block or the
        modules it runs without calling them (its norms and token mixer) would be skipped."""
        return torch.is_autocast_enabled('cpu') and cpu_fused.fast_path_eligible(
            self, x, supported=len(self.op.full_directions) == 1 and
            x.dtype == torch.float32 and x.is_contiguous() and
            not _has_forward_hooks(self, self.norm, self.op, self.norm2))

    def bf16_fused_forward(self, x: torch.Tensor, pending: Optional[torch.Tensor] = None
                           ) -> Tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` on the CPU fast path under bf16 autocast (inference), returning
        ``(x, y)`` with the block's output ``x + y``: the last branch output ``y`` (bf16) is
        left for the next block's first norm to add (``pending``), as the other adds and
        the LayerNorms before bf16 products are: fused
        :func:`~msvmamba_ops.cpu_fused.residual_layer_norm` passes (add, norm and bf16
        rounding in one; ATen runs three; the add alone for v3's post-norm block), the norm
        before the token mixer also written twice along each row for its split-weight
        product. Forward hooks of the norms and the token mixer do not run here (see
        :meth:`bf16_fast_path_eligible`)."""
        x, h, twice = cpu_fused.residual_layer_norm(
            x, pending, (self.norm.weight, self.norm.bias), self.norm.eps,
            twice=cpu_fused.amx_bf16_products())
        y = self.op._fused_forward(h, x_twice=twice)
        if self.ffn_pre_norm:
            x, h, _ = cpu_fused.residual_layer_norm(
                x, y, (self.norm2.weight, self.norm2.bias), self.norm2.eps)
            return x, self.convFFN(h)
        x = cpu_fused.residual_layer_norm(x, y, None)[0]  # the add only
        return x, self.norm2(self.convFFN(x))


def _has_forward_hooks(*modules: nn.Module) -> bool:
    """Whether a forward (pre-)hook would see any of ``modules`` called, globally or on one
    of them."""
    return bool(module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks
                or any(m._forward_hooks or m._forward_pre_hooks for m in modules))


class MSVMambaStage(nn.Module):
    """A stage: ``blocks`` then ``downsample`` (Identity for the last stage).

    Args:
        blocks (list[VSSBlock]): The stage's blocks.
        downsample (nn.Module): Maps the stage output to the next stage's input.
        with_cp (bool): Gradient checkpointing of each block while training.
    """

    def __init__(self, blocks: List[nn.Module], downsample: nn.Module, with_cp: bool = False):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.downsample = downsample
        self.with_cp = with_cp

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns (stage output before downsampling, downsampled map)."""
        if x.device.type == 'cpu' and torch.is_autocast_enabled('cpu') and \
                x.dtype == torch.bfloat16:
            # The residual stream stays float32 under CPU autocast: CPU autocast runs
            # LayerNorm in its input's dtype, so the stem's and the downsampling's bf16
            # outputs would make the whole stream bf16, rounded at every block's add. (CUDA
            # autocast is left as it was: not measured there.)
            x = x.float()
        pending = None  # a bf16 fast-path block's last branch output, not yet added to x
        for block in self.blocks:
            if block.bf16_fast_path_eligible(x):
                x, pending = block.bf16_fused_forward(x, pending)
                continue
            if pending is not None:
                x, pending = cpu_fused.residual_layer_norm(x, pending, None)[0], None
            if self.with_cp and self.training and torch.is_grad_enabled():
                x = cp.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        if pending is not None:  # (ATen would convert pending to float32 first)
            x = cpu_fused.residual_layer_norm(x, pending, None)[0]
        return x, self.downsample(x)


class MSVMamba(BaseModule):
    """MSVMamba backbone for classification, detection and segmentation.

    ``arch`` selects the architecture: 'nano', 'micro', 'tiny' (master branch, paper
    numbers and det/seg) or 'v3_tiny', 'v3_small', 'v3_base' (v2 branch "MSVMambav3").
    A dict overrides settings of a preset named by its optional ``base`` key
    (default 'tiny'), e.g. ``dict(base='v3_tiny', dims=32, depths=(1, 1, 2, 1))``.
    Settings (see ``arch_zoo``):

    - ``dims`` (int | 4 ints; int C means C, 2C, 4C, 8C), ``depths`` (4 ints);
    - ``d_state``, ``ssm_ratio``, ``dt_rank`` ('auto' = ceil(C/16)): SSM sizes;
    - ``ms_split``: scan directions at full / low resolution ((1, 3));
    - ``ssm_gate``: SiLU(z) output gate (master, v3 'vms') or none (v3 'vms_noz');
    - ``out_norm``: 'per_branch' (master) or 'merged' (v3) scan-output LayerNorm;
    - ``upsample``: 'bilinear' (master) or 'nearest' (v3) low-res upsampling;
    - ``low_res_group``: parameter group of the low-res branch (master 0, v3 1);
    - ``se_reduction``: squeeze-excite reduction (8; 0 disables SE);
    - ``ffn_ratio``, ``ffn_norm`` ('pre' master / 'post' v3), ``ffn_drop`` (0.0): ConvFFN;
    - ``stem``: 'conv4x4' (master) or 'conv3x3x2' (v3); ``downsample``:
      'patch_merging' (master) or 'conv3x3' (v3);
    - ``norm_eps`` (1e-5); ``drop_path_rate`` (the recipe's value, used when the
      ``drop_path_rate`` argument is None).

    Upstream's channel-first (v3) vs channel-last (master) choice is a memory layout with
    identical math and weights, so it is not a setting: this implementation always keeps
    a channel-last residual stream.

    Outputs. The forward returns a tuple of NCHW maps, one per entry of ``out_indices`` in
    stage order, each taken at the end of stage i BEFORE its downsampling (strides 4, 8,
    16, 32):

    - dense mode (detection / segmentation): ``out_indices=(0, 1, 2, 3)``,
      ``final_norm=False``. Each output goes through its own LayerNorm ``outnorm{i}``
      (state-dict layout of the upstream mmdet/mmseg backbone).
    - classification mode (default): ``out_indices=(3,)``, ``final_norm=True``. The last
      stage goes through ``final_norm`` instead of ``outnorm3``; it is the classifier norm
      of the official checkpoints (``classifier.norm.*`` loads into it), kept separate from
      ``outnorm3`` because det/seg train ``outnorm3`` from scratch. Use it with a
      GlobalAveragePooling neck and a LinearClsHead.

    Args:
        arch (str | dict): Architecture preset or settings. Defaults to 'tiny'.
        in_channels (int): Input image channels. Defaults to 3.
        out_indices (Sequence[int]): Stages whose outputs are returned. Defaults to (3,).
        final_norm (bool): Classification mode, see above. Defaults to True.
        drop_path_rate (float, optional): Stochastic depth, linearly increasing over all
            blocks from 0. None takes the arch's training-recipe value.
        frozen_stages (int): -1 freezes nothing; k >= 0 freezes the stem and stages
            0..k-1 (with their downsampling and output norms; k = 4 also final_norm),
            sets them to eval mode and keeps them there in ``train()``. Defaults to -1.
        with_cp (bool): Gradient checkpointing of every block. Defaults to False.
        init_cfg (dict, optional): None keeps the initialisation done at construction.
            ``dict(type='Pretrained', checkpoint=PATH, prefix=None, use_ema=False)``
            loads an official MSVMamba checkpoint ('model' weights, or 'model_ema' with
            ``use_ema=True``), an mmengine checkpoint (use ``prefix='backbone.'`` for a
            whole-model file) or a bare state dict; see ``checkpoint.py``. The load is
            strict (``strict=False`` in the dict allows a partial one).
    """

    arch_zoo: Dict[str, dict] = {
        'nano': dict(_COMMON, **_MASTER, dims=48, depths=(1, 2, 5, 2), drop_path_rate=0.2),
        'micro': dict(_COMMON, **_MASTER, dims=64, depths=(1, 2, 5, 2), drop_path_rate=0.2),
        'tiny': dict(_COMMON, **_MASTER, dims=96, depths=(1, 2, 9, 2), drop_path_rate=0.2),
        'v3_tiny': dict(_COMMON, **_V3, dims=96, depths=(2, 2, 9, 2), drop_path_rate=0.2),
        'v3_small': dict(_COMMON, **_V3, dims=96, depths=(2, 3, 20, 2), drop_path_rate=0.4),
        'v3_base': dict(_COMMON, **dict(_V3, ssm_gate=True), dims=128, depths=(2, 4, 18, 2),
                        drop_path_rate=0.5),
    }
    num_stages = 4

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (3, ),
                 final_norm: bool = True,
                 drop_path_rate: Optional[float] = None,
                 frozen_stages: int = -1,
                 with_cp: bool = False,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        self.arch_settings = s = self.resolve_arch(arch)
        dims = s['dims']
        self.dims = dims
        self.in_channels = in_channels
        self.out_indices = self._check_out_indices(out_indices)
        if final_norm and self.num_stages - 1 not in self.out_indices:
            raise ValueError('final_norm=True normalises the last stage output, but '
                             f'out_indices={tuple(out_indices)} does not return it: add '
                             f'{self.num_stages - 1} to out_indices or set final_norm=False')
        if not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(f'frozen_stages must be in [-1, {self.num_stages}], '
                             f'got {frozen_stages}')
        self.frozen_stages = frozen_stages
        eps = s['norm_eps']

        self.patch_embed = self._make_stem(s['stem'], in_channels, dims[0], eps)
        # The smallest input whose stem output is non-empty (master: one 4x4 patch).
        self.min_input_size = 4 if s['stem'] == 'conv4x4' else 1

        if drop_path_rate is None:
            drop_path_rate = s['drop_path_rate']
        # Linearly increasing over all blocks (plain floats: also builds on the meta device).
        num_blocks = sum(s['depths'])
        rates = iter([drop_path_rate * i / max(num_blocks - 1, 1) for i in range(num_blocks)])
        ssm_cfg = dict(d_state=s['d_state'], ssm_ratio=s['ssm_ratio'], dt_rank=s['dt_rank'],
                       gate=s['ssm_gate'], out_norm=s['out_norm'], upsample=s['upsample'],
                       low_res_group=s['low_res_group'], ms_split=s['ms_split'],
                       se_reduction=s['se_reduction'])
        self.layers = nn.ModuleList()
        for i, depth in enumerate(s['depths']):
            blocks = [
                VSSBlock(dims[i], ssm_cfg, ffn_ratio=s['ffn_ratio'], ffn_norm=s['ffn_norm'],
                         ffn_drop=s['ffn_drop'], drop_path=next(rates), norm_eps=eps)
                for _ in range(depth)
            ]
            if i < self.num_stages - 1:
                downsample = self._make_downsample(s['downsample'], dims[i], dims[i + 1],
                                                   eps)
            else:
                downsample = nn.Identity()
            self.layers.append(MSVMambaStage(blocks, downsample, with_cp))

        for i in self.out_indices:
            if final_norm and i == self.num_stages - 1:
                continue
            self.add_module(f'outnorm{i}', nn.LayerNorm(dims[i], eps=eps))
        self.final_norm = nn.LayerNorm(dims[-1], eps=eps) if final_norm else None

        self._init_default_weights()
        self._freeze_stages()

    # ------------------------------------------------------------------ construction
    @classmethod
    def resolve_arch(cls, arch: Union[str, dict]) -> dict:
        """Full settings dict of ``arch`` (preset name or overrides of a preset)."""
        if isinstance(arch, str):
            if arch not in cls.arch_zoo:
                raise ValueError(f'unknown arch {arch!r}; choose one of '
                                 f'{sorted(cls.arch_zoo)} or pass a dict of settings')
            settings = copy.deepcopy(cls.arch_zoo[arch])
        elif isinstance(arch, dict):
            arch = dict(arch)
            base = arch.pop('base', 'tiny')
            settings = cls.resolve_arch(base)
            unknown = sorted(set(arch) - set(settings))
            if unknown:
                raise ValueError(f'unknown arch settings {unknown}; valid keys: '
                                 f"{sorted(settings) + ['base']}")
            settings.update(copy.deepcopy(arch))
        else:
            raise TypeError(f'arch must be a str or dict, got {type(arch).__name__}')
        dims = settings['dims']
        if isinstance(dims, int):
            dims = [dims * 2**i for i in range(cls.num_stages)]
        settings['dims'] = list(dims)
        settings['depths'] = list(settings['depths'])
        if len(settings['dims']) != cls.num_stages or len(settings['depths']) != cls.num_stages:
            raise ValueError(f'dims and depths need {cls.num_stages} entries, got '
                             f"{settings['dims']} and {settings['depths']}")
        return settings

    def _check_out_indices(self, out_indices: Sequence[int]) -> Tuple[int, ...]:
        if isinstance(out_indices, int):
            out_indices = (out_indices, )
        result = []
        for i in out_indices:
            j = i + self.num_stages if i < 0 else i
            if not 0 <= j < self.num_stages:
                raise ValueError(f'out_indices entries must be in [-{self.num_stages}, '
                                 f'{self.num_stages - 1}], got {i}')
            result.append(j)
        if len(set(result)) != len(result):
            raise ValueError(f'out_indices has repeated stages: {tuple(out_indices)}')
        return tuple(sorted(result))

    @staticmethod
    def _make_stem(kind: str, in_channels: int, channels: int, eps: float) -> nn.Sequential:
        # Sequential indices follow upstream, so keys are patch_embed.{0,2} (conv4x4) and
        # patch_embed.{0,2,5,7} (conv3x3x2); the parameter-free slots change layout.
        if kind == 'conv4x4':
            return nn.Sequential(
                nn.Conv2d(in_channels, channels, 4, stride=4), ToChannelsLast(),
                nn.LayerNorm(channels, eps=eps))
        if kind == 'conv3x3x2':
            half = channels // 2
            return nn.Sequential(
                nn.Conv2d(in_channels, half, 3, stride=2, padding=1), ToChannelsLast(),
                nn.LayerNorm(half, eps=eps), ToChannelsFirst(), nn.GELU(),
                nn.Conv2d(half, channels, 3, stride=2, padding=1), ToChannelsLast(),
                nn.LayerNorm(channels, eps=eps))
        raise ValueError(f"stem must be 'conv4x4' or 'conv3x3x2', got {kind!r}")

    @staticmethod
    def _make_downsample(kind: str, channels: int, out_channels: int,
                         eps: float) -> nn.Module:
        if kind == 'patch_merging':
            return PatchMerging2D(channels, out_channels, eps)
        if kind == 'conv3x3':
            # Keys downsample.{1,3}; on a channels_last view the conv needs no copy.
            return nn.Sequential(
                ToChannelsFirst(), nn.Conv2d(channels, out_channels, 3, stride=2, padding=1),
                ToChannelsLast(), nn.LayerNorm(out_channels, eps=eps))
        raise ValueError(f"downsample must be 'patch_merging' or 'conv3x3', got {kind!r}")

    def _init_default_weights(self):
        """Upstream's construction-time init: trunc-normal Linear weights (std 0.02) with
        zero bias, unit LayerNorms; convs keep PyTorch's default; SSM parameters keep
        their own init (done in MultiScaleSS2D)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def init_weights(self):
        """Load ``init_cfg=dict(type='Pretrained', ...)`` with the MSVMamba-aware loader;
        other init_cfg types go to mmengine. Construction already initialised the
        weights, so ``init_cfg=None`` changes nothing."""
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            unknown = set(cfg) - {'type', 'checkpoint', 'prefix', 'use_ema', 'map_location',
                                  'strict'}
            if unknown:
                raise ValueError(f'unknown Pretrained init_cfg keys {sorted(unknown)}')
            load_pretrained(self, cfg['checkpoint'], prefix=cfg.get('prefix'),
                            use_ema=cfg.get('use_ema', False),
                            map_location=cfg.get('map_location', 'cpu'),
                            strict=cfg.get('strict', True))
            self._is_init = True  # mmengine's flag: do not initialise again
        else:
            if isinstance(cfg, list) and any(c.get('type') == 'Pretrained' for c in cfg):
                raise ValueError('give the Pretrained init_cfg of MSVMamba as a single dict '
                                 '(it is loaded by MSVMamba.init_weights, not by mmengine)')
            super().init_weights()

    def adapt_state_dict(self, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Map classification-checkpoint names onto this backbone: ``classifier.norm.*``
        -> ``final_norm.*`` when this backbone has one. Other keys are returned as they
        are (the classification head ends up as 'unexpected', which the loader reports)."""
        if self.final_norm is None:
            return state_dict
        return {('final_norm.' + k[len('classifier.norm.'):]
                 if k.startswith('classifier.norm.') else k): v
                for k, v in state_dict.items()}

    # ------------------------------------------------------------------ freezing
    def _frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        modules = [self.patch_embed]
        for i in range(self.frozen_stages):
            modules.append(self.layers[i])
            if hasattr(self, f'outnorm{i}'):
                modules.append(getattr(self, f'outnorm{i}'))
        if self.frozen_stages == self.num_stages and self.final_norm is not None:
            modules.append(self.final_norm)
        return modules

    def _freeze_stages(self):
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()  # frozen stages stay in eval mode (no drop path)
        return self

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: torch.Tensor):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f'MSVMamba expects a 4-D (B, {self.in_channels}, H, W) image '
                             f'batch, got {shape}; add a batch dimension with '
                             'x.unsqueeze(0) for a single image')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'MSVMamba was built for {self.in_channels} input channels but '
                             f'got {x.shape[1]} (input shape {tuple(x.shape)}); pass images '
                             f'as (B, C, H, W) or build it with in_channels={x.shape[1]}')
        if min(x.shape[2:]) < self.min_input_size:
            raise ValueError(f'input {tuple(x.shape[2:])} is smaller than the smallest size '
                             f'this stem takes ({self.min_input_size}x{self.min_input_size}); '
                             'resize or pad the images')
        if not x.is_floating_point():
            raise TypeError(f'MSVMamba expects a floating-point input, got {x.dtype}; '
                            'convert with x.float()')

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """x: (B, in_channels, H, W). Returns one (B, C_i, H_i, W_i) map per out index."""
        self._check_input(x)
        x = self.patch_embed(x)
        outs = []
        last = self.num_stages - 1
        for i, layer in enumerate(self.layers):
            feat, x = layer(x)
            if i in self.out_indices:
                norm = self.final_norm if (i == last and self.final_norm is not None) else \
                    getattr(self, f'outnorm{i}')
                outs.append(norm(feat).permute(0, 3, 1, 2).contiguous())
        return tuple(outs)
