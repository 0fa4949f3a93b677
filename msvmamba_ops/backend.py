"""The scan backend protocol: what every backend module of ``msvmamba_ops`` provides.

A backend is a module registered by name in ``msvmamba_ops/scan.py`` (``REGISTRY``):
``reference`` (:mod:`.reference`), ``cpu`` (:mod:`.cpu_scan`), ``chunked``
(:mod:`.chunked_scan`), ``triton`` (:mod:`.triton_scan`) and ``cuda`` (:mod:`.cuda_scan`).
Each one has the members of :class:`ScanBackend`:

* ``SUPPORT`` (:class:`Support`): the device types and input dtypes it takes, and whether
  ``selective_scan`` runs it inline (plain torch ops) or as the opaque custom op;
* ``unavailable_reason(device_type, dtype, build)``: None when it can run here on such
  tensors, else why not and how to fix it;
* ``fwd`` and ``bwd``: the scan and its gradients, below autograd.

A backend module imports on any machine: a missing library or build is what its
``unavailable_reason`` reports (with the command that fixes it), never an ImportError.

``scan.py`` validates and normalises the inputs before a backend sees them: u and delta
(Bt, D, L) contiguous in one dtype of ``SUPPORT.dtypes``; A (D, N) float32 (float64 for
float64 inputs); B and C (Bt, G, N, L) in u's dtype, G dividing D; D and delta_bias (D,)
in A's dtype, or None. ``fwd`` returns (Bt, D, L) in u's dtype, or float32 when
``out_float`` (fp16/bf16 inputs). ``bwd`` recomputes what it needs from the inputs
(nothing is saved but them) and returns (du, ddelta, dA, dB, dC, dD, ddelta_bias), dD /
ddelta_bias None when D / delta_bias is None; ``dout`` has u's dtype or float32.
``scan.py`` casts the results and copies any that alias an input.
"""
from dataclasses import dataclass
from typing import Optional, Protocol, Tuple

import torch
from torch import Tensor

ALL_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
NO_FLOAT64 = ALL_DTYPES[:3]


@dataclass(frozen=True)
class Support:
    """What a backend takes.

    Args:
        devices: the tensor device types it runs on ('cpu', 'cuda', ...); None: any (plain
            torch ops). An emulator a backend offers for tests (Triton's interpreter) is left
            to its ``unavailable_reason``.
        dtypes: the dtypes of u, delta, B and C it accepts (it accumulates in float32, or in
            float64 for float64 inputs).
        inline: ``selective_scan`` calls the module's differentiable ``scan`` (same
            arguments as ``fwd``) directly instead of the opaque custom op, so that
            torch.compile traces and fuses its ops; exporters record this backend.
    """
    devices: Optional[Tuple[str, ...]]
    dtypes: Tuple[torch.dtype, ...]
    inline: bool = False

    @property
    def float64(self) -> bool:
        return torch.float64 in self.dtypes

    def runs_on(self, device_type: str) -> bool:
        return self.devices is None or device_type in self.devices

    def unsupported(self, device_type: str, dtype: torch.dtype) -> Optional[str]:
        """Why these tensors are outside what the backend takes, or None."""
        if not self.runs_on(device_type):
            return f'it runs on {" or ".join(self.devices)} tensors only'
        if dtype not in self.dtypes:
            names = ', '.join(str(d).replace('torch.', '') for d in self.dtypes)
            return f'it does not support {str(dtype).replace("torch.", "")} inputs ({names})'
        return None


class ScanBackend(Protocol):
    """The members of a backend module (see the module docstring for the input contract)."""

    SUPPORT: Support

    def unavailable_reason(self, device_type: str, dtype: torch.dtype = torch.float32,
                           build: bool = False) -> Optional[str]:
        """None if ``fwd``/``bwd`` can run on ``device_type`` tensors of ``dtype`` here, else
        why not, with the fix. ``build``: a compiled backend may compile its missing
        extension (minutes); otherwise it only loads a finished build. Under the 'auto'
        backend this runs on every eager call: remember what is slow to find out."""

    def fwd(self, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
            D: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool,
            out_float: bool) -> Tensor:
        """y (Bt, D, L)."""

    def bwd(self, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
            D: Optional[Tensor], delta_bias: Optional[Tensor], dout: Tensor,
            delta_softplus: bool) -> Tuple[Optional[Tensor], ...]:
        """(du, ddelta, dA, dB, dC, dD or None, ddelta_bias or None)."""


__all__ = ['Support', 'ScanBackend', 'ALL_DTYPES', 'NO_FLOAT64']
