"""Whether the ops are being recorded into a graph rather than run eagerly.

Code that takes a different path while a graph is recorded asks here: the scan
dispatcher (:mod:`msvmamba_ops.scan`), the chunked scan's layout and level count, the
index tensors of :mod:`msvmamba_ops.scan_order`, the fused CPU fast path's eligibility
(:mod:`msvmamba_ops.cpu_fused`) and the backbone's export layout.
"""
import torch


def exporting() -> bool:
    """True while an exporter (``torch.export``, ONNX) records the ops: the selective scan is
    then the chunked one, whatever backend was asked for, and exported graphs must not
    branch on (symbolic) sizes."""
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


def recording_graph() -> bool:
    """True while a tracer records the ops (export, torch.compile, jit tracing): shapes
    may be symbolic, so no Python branch may depend on them, and a cached tensor would be
    recorded as a constant."""
    return torch.compiler.is_compiling() or exporting() or torch.jit.is_tracing()


__all__ = ['exporting', 'recording_graph']
