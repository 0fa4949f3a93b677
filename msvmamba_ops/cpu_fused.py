"""The fused CPU inference ops of the MSVMamba block and the check that says when a module
may use them (as ``torch.nn.MultiheadAttention`` keeps its fast path apart from its math).

Tensor-level C++ ops, forward only, float32 CPU tensors (some bf16, see below):

* ``msvmamba_cpu::ms2d_branch`` (:func:`ms2d_branch`): one token-mixer branch (depthwise
  conv, SiLU, x/dt projections, the selective scan, out_norm, the merge of the scan
  directions and, for the full-resolution branch, the upsampled low-res sum, squeeze-excite
  pooling and the SiLU gate) in one pass per scan step over the step's E channels
  (``csrc/cpu/ms2d_cpu.cpp`` lists the math);
* ``msvmamba_cpu::convffn_dwconv_gelu`` (:func:`convffn_dwconv_gelu`): the ConvFFN's
  bias, depthwise conv, residual and GELU (``csrc/cpu/convffn_cpu.cpp``);
* for bf16 autocast only, ``msvmamba_cpu::residual_layer_norm``
  (:func:`residual_layer_norm`: a block's residual add and the LayerNorm before its bf16
  products, rounded to bf16, in one pass) and ``msvmamba_cpu::scale_channels_``
  (:func:`scale_channels_`: squeeze-excite's scaling of a bf16 map), in
  ``csrc/cpu/norm_cpu.cpp``.

They take tensors and numbers, not modules. The backbone's modules
(``projects/msvmamba/msvmamba.py``) compute their forward as plain tensor ops; when
:func:`fast_path_eligible` says so, ``MultiScaleSS2D`` and ``ConvFFN`` run their
``_fused_forward`` instead, which passes their weights to these ops. Same results to
float32 rounding: ``tests/backbone/test_fast_path.py`` checks the modules both ways,
``tests/ops/test_cpu_fused.py`` the ops themselves, ``tests/backbone`` the whole backbone
against the official reference outputs.

The fast path is taken only in inference on float32 CPU tensors with the ops built, and
never while a tracer, compiler or exporter records the model (they must see the plain ops,
which FLOP handles, graph passes and ONNX know); :func:`why_not_fast_path` lists every
condition. ``MSVMAMBA_FUSED_CPU=0`` turns it off (e.g. to time the plain modules); a scan
backend other than ``auto``/``cpu`` in ``MSVMAMBA_SCAN_BACKEND`` also does, since the fused
op carries its own scan.

Under ``torch.autocast('cpu', dtype=torch.bfloat16)`` the fast path stays on where the CPU
multiplies bf16 natively (:func:`bf16_instructions`: avx512_bf16 or AMX). The projections
run in bf16 on kept bf16 copies of their weights (:func:`bf16_weight`), and the fused ops
read and write their bf16 maps themselves (the branch input, the gate and the output; the
ConvFFN op's input and output), widening and rounding as the data streams through rather
than in cast passes of their own. Their math stays float32 (the scan's state, decays and
sums, the norms), and so does the residual stream between the blocks. The scan half of
in_proj, whose output drives the scan, multiplies the rows ``[x, x]`` with its weight split
into bf16 high and low parts (``bf16_weight(..., split=True)``): bf16 speed where oneDNN
multiplies on AMX (:func:`amx_bf16_products`), the weight exact to about 16 bits, since a
rounded weight is the same error on every token (without AMX a float32 product).
``VSSBlock.bf16_fused_forward`` and ``MSVMambaStage`` put these together. Float16 autocast,
or bf16 on a CPU that would emulate it, keeps the plain modules.
"""
import os
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from . import cpu_scan
from .graph_mode import exporting
from .scan import ENV_BACKEND

ENV_FUSED = 'MSVMAMBA_FUSED_CPU'
_built_reason: Optional[str] = None  # why the ops cannot be loaded ('' once they can)


def unavailable_reason() -> Optional[str]:
    """None if the fused ops are built and the environment allows them, else why not."""
    global _built_reason
    if os.environ.get(ENV_FUSED, '1') == '0':
        return f'{ENV_FUSED}=0'
    backend = (os.environ.get(ENV_BACKEND) or 'auto').strip().lower()
    if backend not in ('auto', 'cpu'):
        return f'{ENV_BACKEND}={backend} (the fused ops carry the cpu scan)'
    if _built_reason is None:
        reason = cpu_scan.unavailable_reason()
        if reason is None and not hasattr(cpu_scan.ops(), 'ms2d_branch'):
            reason = 'the cpu extension was built without the fused ops'
        _built_reason = reason or ''
    return _built_reason or None


def is_available() -> bool:
    """True if the fused ops are built and the environment allows them."""
    return unavailable_reason() is None


def bf16_instructions() -> bool:
    """Whether this CPU multiplies bf16 natively (avx512_bf16 or AMX-bf16), so that oneDNN's
    bf16 matmuls beat float32 ones; elsewhere it emulates bf16 and runs slower than float32."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, 'get_capabilities') else {}
    return bool(caps.get('avx512_bf16') or caps.get('amx_bf16'))


def amx_bf16_products() -> bool:
    """Whether oneDNN's bf16 matmuls run on AMX here: the CPU has AMX-bf16 and
    ``ONEDNN_MAX_CPU_ISA``, if set, does not cap oneDNN below it. There a bf16 product is
    several times faster than a float32 one (Tiny's stage-1 in_proj shape: 0.76 against
    7.0 ms on the 2-vCPU Xeon), so one twice as deep still wins; with avx512_bf16 alone the
    same Xeon (AMX capped off) took 8.3 against 8.8 ms."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, 'get_capabilities') else {}
    cap = os.environ.get('ONEDNN_MAX_CPU_ISA', '').upper()
    return bool(caps.get('amx_bf16')) and (cap in ('', 'ALL', 'DEFAULT') or 'AMX' in cap)


# bf16 copies of float32 weights for the fast path under autocast: parameter -> {(rows,
# split): (version, data pointer, float32 sample, copy)}. Weak keys by identity: a copy
# lives only as long as its parameter.
_bf16_copies = WeakIdKeyDictionary()
_SAMPLED = 16  # elements compared at each use (see bf16_weight)


def _sample(t: Tensor) -> Tensor:
    flat = t.detach().reshape(-1)
    return flat[::max(1, flat.numel() // _SAMPLED)][:_SAMPLED]


def bf16_weight(weight: Tensor, rows: Optional[Tuple[int, int]] = None,
                split: bool = False) -> Tensor:
    """``weight[rows[0]:rows[1]]`` (the whole of it by default) in bf16, kept from one
    forward to the next: autocast casts every float32 weight again at each forward (4% of
    Tiny's bf16 forward at batch 8). With ``split`` the copy is ``[high, low]`` along the
    input dim (out, 2 * in): ``high`` the weight rounded to bf16, ``low`` the rest rounded
    to bf16, so that ``[x, x] @ copy.T`` is ``x @ weight.T`` with the weight exact to about
    16 bits.

    The copy is made again when the weight may have changed: its version counter moved
    (an in-place update under autograd's eye: ``load_state_dict``, an optimizer step,
    ``with torch.no_grad(): w.copy_(...)``; inference tensors have none), its storage is
    another (``.to()``, ``w.data = ...``), or one of 16 elements spread over it differs
    from its value when the copy was made (an update through ``w.data``, which the version
    counter does not see: mmengine's EMA swap, a momentum teacher). Costs the bf16 size of
    the weights the fast path multiplies with (half their float32 size) while they live."""
    copies = _bf16_copies.setdefault(weight, {})
    source = weight if rows is None else weight[rows[0]:rows[1]]
    key = (rows, split)
    version = None if weight.is_inference() else weight._version
    ptr = weight.data_ptr()
    kept = copies.get(key)
    if (kept is None or kept[0] != version or kept[1] != ptr
            or not torch.equal(_sample(source), kept[2])):
        # ordinary tensors even when first made under inference_mode (as scan_order's
        # cached indices): the copy may serve a later forward outside it
        with torch.inference_mode(False), torch.no_grad():
            copy = source.detach().to(torch.bfloat16, copy=True)
            if split:
                low = (source.detach() - copy.float()).to(torch.bfloat16)
                copy = torch.cat([copy, low], 1)
            kept = (version, ptr, _sample(source).clone(), copy)
        copies[key] = kept
    return kept[3]


def _autocast_reason() -> Optional[str]:
    """None if the fast path's autocast mode (bf16 projections around float32 fused ops)
    fits the CPU autocast in force, else why not."""
    dtype = torch.get_autocast_dtype('cpu')
    if dtype != torch.bfloat16:
        return (f'CPU autocast in {dtype} (the fused path supports bfloat16 autocast; '
                'float16 has no fast CPU matmuls and a narrow range)')
    if not bf16_instructions():
        return ('CPU autocast in bfloat16 on a CPU without avx512_bf16 or AMX-bf16 '
                '(emulated bf16 would be slower than float32)')
    return None


def why_not_fast_path(module: torch.nn.Module, x: Tensor,
                      supported: bool = True) -> Optional[str]:
    """None when the fused ops may stand in for ``module``'s forward on ``x``, else the first
    reason they may not. ``supported``: the module's configuration is one the fused op
    covers."""
    # Graph capture first (cheap, and no further checks get traced into a graph).
    # is_compiling is True under torch.compile and torch.export's dynamo tracing alike.
    if torch.compiler.is_compiling():
        return 'torch.compile or torch.export is tracing'
    if exporting():
        return 'the model is being exported'
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return 'torch.jit is tracing or scripting'
    if module.training:
        return 'training mode'
    if not supported:
        return 'a configuration the fused op does not cover'
    if type(x) is not torch.Tensor:  # fake, functional or distributed tensors
        return f'the input is a {type(x).__name__}'
    autocast = torch.is_autocast_enabled('cpu')
    if autocast:
        reason = _autocast_reason()
        if reason:
            return reason
    # under bf16 autocast a bf16 input is what the previous layer's matmul returns
    if x.device.type != 'cpu' or x.dtype not in ((torch.float32, torch.bfloat16) if autocast
                                                 else (torch.float32, )):
        return (f'a {x.dtype} input on {x.device.type} (the ops take float32 CPU tensors'
                f'{", or bf16 ones under bf16 autocast" if autocast else ""})')
    params = list(module.parameters())
    if any(p.dtype != torch.float32 or p.device.type != 'cpu' for p in params):
        return 'parameters that are not float32 CPU tensors'
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return 'autograd needs gradients (the ops are forward only)'
    return unavailable_reason()


def fast_path_eligible(module: torch.nn.Module, x: Tensor, supported: bool = True) -> bool:
    """Whether ``module(x)`` may run on the fused ops (see :func:`why_not_fast_path`)."""
    return why_not_fast_path(module, x, supported) is None


# ---------------------------------------------------------------------------- the ops

def ms2d_branch(x: Tensor,
                conv_weight: Tensor,
                conv_bias: Optional[Tensor],
                stride: int,
                padding: int,
                order: Optional[Tensor],
                x_proj_weight: Tensor,
                dt_proj_weight: Tensor,
                dt_bias: Tensor,
                A: Tensor,
                D: Optional[Tensor],
                norm: Optional[Tuple[Tensor, Tensor]],
                eps: float,
                low: Optional[Tensor] = None,
                nearest: bool = False,
                post_norm: Optional[Tuple[Tensor, Tensor]] = None,
                z: Optional[Tensor] = None,
                pool: bool = False,
                bf16_out: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
    """One branch of MultiScaleSS2D, forward only, float32 CPU tensors (the input ``x`` and
    the gate ``z`` may be bf16, and the full-resolution branch may write bf16: ``bf16_out``).

    Args:
        x: (B, Hin, Win, E) channel-last map before the branch's depthwise conv, float32 or
            bf16 (widened as the conv reads it).
        conv_weight, conv_bias, stride, padding: the depthwise conv ((E, 1, k, k) weight,
            (E,) bias or None, zero padding), followed by SiLU; its output map is (H, W).
        order: (K*H*W,) int64, the map position of each scan step (K directions, each a
            permutation of the positions), or None: one row-major direction.
        x_proj_weight: (R + 2N, E); dt_proj_weight: (E, R); dt_bias: (E,);
        A: (E, N), already ``-exp(A_log)``; D: (E,) or None.
        norm: (weight, bias) of a LayerNorm applied to each step's output before the
            directions are merged (master's per-branch out_norm), or None.
        eps: LayerNorm epsilon (both norms).
        low, nearest, post_norm, z, pool: the full-resolution epilogue (one direction only):
            add ``low`` (B, h, w, E) upsampled to (H, W) (bilinear, align_corners=False, or
            nearest), then LayerNorm ``post_norm`` (v3's merged out_norm), sum the result
            over positions if ``pool`` (squeeze-excite input), multiply by SiLU(z) for a
            (B, H*W, E) gate ``z`` (float32 or bf16).
        bf16_out: return ``out`` rounded to bf16 (as ``.bfloat16()`` would), for a bf16
            out_proj; needs ``low`` (the full-resolution epilogue).

    Returns:
        (out, pooled): out (B, H*W, E) float32 (bf16 with ``bf16_out``); pooled (B, E)
        float32 sums over positions when ``pool``, else None.
    """
    nw, nb = norm if norm is not None else (None, None)
    pw, pb = post_norm if post_norm is not None else (None, None)
    out, pooled = cpu_scan.ops().ms2d_branch(x, conv_weight, conv_bias, stride, padding, order,
                                             x_proj_weight, dt_proj_weight, dt_bias, A, D, nw,
                                             nb, float(eps), low, nearest, pw, pb, z, pool,
                                             bf16_out)
    return out, (pooled if pool else None)


def convffn_dwconv_gelu(h: Tensor, in_bias: Optional[Tensor], weight: Tensor,
                        bias: Optional[Tensor]) -> Tensor:
    """``GELU(t + dwconv(t) + bias)`` with ``t = h + in_bias``, forward only, CPU, computed
    in float32.

    Args:
        h: (B, H, W, F) channel-last map (the ConvFFN's linear1 output without its bias),
            float32 or bf16 (a bf16 linear1 under autocast).
        in_bias: (F,) added to h first (linear1's bias), or None.
        weight: (F, 1, k, k) depthwise kernel, k odd, stride 1, zero padding k // 2.
        bias: (F,) conv bias or None.

    Returns:
        (B, H, W, F) in h's dtype (bf16: the float32 result rounded to nearest even, as
        ``.bfloat16()``); GELU is the exact (erf) form.
    """
    return cpu_scan.ops().convffn_dwconv_gelu(h, in_bias, weight, bias)


def residual_layer_norm(x: Tensor, y: Optional[Tensor], norm: Optional[Tuple[Tensor, Tensor]],
                        eps: float = 1e-5, twice: bool = False
                        ) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """The residual add and the LayerNorm before bf16 products, in one pass (forward only,
    CPU): ``s = x + y`` (``x`` itself when ``y`` is None) and ``n = LayerNorm(s)`` over the
    last dim, computed in float32 and rounded to bf16.

    Args:
        x: (..., C) float32, the residual stream.
        y: the same shape, float32 or bf16 (a branch output joining the stream), or None.
        norm: (weight, bias), (C,) float32, of the LayerNorm, or None: the add only.
        eps: the LayerNorm's epsilon.
        twice: also return the rows ``[n, n]`` (..., 2C), the input of a product on a
            weight split into bf16 high and low parts (``bf16_weight(..., split=True)``).

    Returns:
        (s, n, n_twice): s float32 shaped as x; n bf16 shaped as x (None without norm);
        n_twice bf16 (..., 2C) with ``twice``, else None.
    """
    weight, bias = norm if norm is not None else (None, None)
    s, n, n2 = cpu_scan.ops().residual_layer_norm(x, y, weight, bias, float(eps), twice)
    return (x if y is None else s), (n if norm is not None else None), (n2 if twice else None)


def scale_channels_(y: Tensor, scale: Tensor) -> Tensor:
    """``y[b, p, e] *= scale[b, e]`` in place for a bf16 (B, P, E) map and a float32 (B, E)
    scale (squeeze-excite under bf16 autocast): each product rounded to bf16 once, without
    ATen's float32 copies of both tensors around a mixed-dtype multiply."""
    return cpu_scan.ops().scale_channels_(y, scale)


__all__ = ['fast_path_eligible', 'why_not_fast_path', 'is_available', 'unavailable_reason',
           'bf16_instructions', 'amx_bf16_products', 'bf16_weight', 'ms2d_branch',
           'convffn_dwconv_gelu', 'residual_layer_norm', 'scale_channels_', 'ENV_FUSED']
