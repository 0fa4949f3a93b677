"""FLOP counting of the selective scan for mmengine.analysis (fvcore-style jit handles).

mmengine's ``FlopAnalyzer`` traces the model with the jit tracer; the scan appears in that
graph as one node of kind ``msvmamba::selective_scan_fwd`` (our torch.library op), which it
does not know. Counting convention (docs/architecture.md §9.20, upstream ``flops()``):
9·Bt·L·D·N for the scan, plus Bt·D·L when D is given.

Use, through mmengine's public ``set_op_handle``::

    from mmengine.analysis import ActivationAnalyzer, FlopAnalyzer
    from msvmamba_ops.flops import MSVMAMBA_ACTIVATION_HANDLES, MSVMAMBA_FLOP_HANDLES
    flops = FlopAnalyzer(model, inputs).set_op_handle(**MSVMAMBA_FLOP_HANDLES).total()
    acts = ActivationAnalyzer(model, inputs).set_op_handle(**MSVMAMBA_ACTIVATION_HANDLES)

(``tools/analysis_tools/get_flops.py`` does this for a config's model.)
"""
from typing import Any, List, Optional, Sequence

SCAN_OP = 'msvmamba::selective_scan_fwd'


def _sizes(value) -> Optional[Sequence[int]]:
    """Sizes of a traced tensor value, None for a None argument (or unknown sizes)."""
    if value.isCompleteTensor():
        return value.type().sizes()
    return None


def scan_flops(batch: int, dim: int, length: int, nstate: int, with_D: bool) -> int:
    """9·Bt·L·D·N (+ Bt·D·L with D): docs/architecture.md §9.20."""
    return 9 * batch * length * dim * nstate + (batch * dim * length if with_D else 0)


def scan_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """mmengine/fvcore op handle for ``msvmamba::selective_scan_fwd``.

    Inputs of the node: u, delta, A, B, C, D, delta_bias, delta_softplus, out_float, backend.
    """
    u_sizes, a_sizes = _sizes(inputs[0]), _sizes(inputs[2])
    if u_sizes is None or a_sizes is None:
        raise ValueError(f'{SCAN_OP}: cannot count FLOPs without the shapes of u and A')
    batch, dim, length = u_sizes
    return scan_flops(batch, dim, length, a_sizes[1], _sizes(inputs[5]) is not None)


def scan_activation_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """mmengine ActivationAnalyzer handle: the scan's output elements (Bt·D·L)."""
    sizes = _sizes(outputs[0])
    if sizes is None:
        raise ValueError(f'{SCAN_OP}: cannot count activations without the output shape')
    count = 1
    for s in sizes:
        count *= s
    return count


def attention_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """Handle for ``aten::scaled_dot_product_attention`` (mmpretrain's ViT/DeiT attention),
    which mmengine does not count: q·kᵀ and the weighted sum of v, L·S·(E + Ev) per batch
    and head, as the explicit matmuls of windowed attention (Swin) are counted."""
    q, k, v = (_sizes(value) for value in inputs[:3])
    if q is None or k is None or v is None:
        raise ValueError('scaled_dot_product_attention: cannot count FLOPs without shapes')
    batch = 1
    for s in q[:-2]:
        batch *= s
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


# Pass to FlopAnalyzer(...).set_op_handle(**MSVMAMBA_FLOP_HANDLES) (and the activation ones to
# ActivationAnalyzer). The backward op never appears in a forward trace. Fused attention is
# counted too, so that the backbones compare_backbones.py sets beside MSVMamba are counted
# whole by the same counter.
MSVMAMBA_FLOP_HANDLES = {SCAN_OP: scan_flop_jit,
                         'aten::scaled_dot_product_attention': attention_flop_jit}
MSVMAMBA_ACTIVATION_HANDLES = {SCAN_OP: scan_activation_jit}

