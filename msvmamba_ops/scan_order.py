"""Index tensors of a multi-direction 2D scan (the order of the tokens of an h x w map in
the concatenated sequence of several scan directions, and the way back).

Directions: 'row' (row-major), 'column' (column-major) and their '_reversed' forms
(``docs/architecture.md §3.1``). Used by the backbone's plain token mixer and by its fused
CPU fast path (which hands the order to :func:`msvmamba_ops.cpu_fused.ms2d_branch`): both
must agree on the order.
"""
import functools
from typing import Tuple

import torch

from .graph_mode import recording_graph

# In the order MSVMamba assigns them: with ms_split = (1, 3) the first one runs on the
# full-resolution map and the other three, concatenated into one sequence, on the
# half-resolution map (docs/architecture.md §3.1).
DIRECTIONS = ('row', 'row_reversed', 'column', 'column_reversed')


def _indices(h: int, w: int, directions: Tuple[str, ...],
             device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    grid = torch.arange(h * w, device=device)
    # Each direction's order (sequence position -> map position) and its inverse (map
    # position -> sequence position), in closed form: the column order is the transpose of
    # the row-major grid, and its inverse the transpose of the column-major one.
    base = {'row': (grid, grid), 'column': (grid.view(h, w).t().flatten(),
                                            grid.view(w, h).t().flatten())}
    orders, inverses = [], []
    for k, d in enumerate(directions):
        order, inverse = base[d.replace('_reversed', '')]
        if d.endswith('_reversed'):  # position p of the reversed sequence is L - 1 - p
            order, inverse = order.flip(0), h * w - 1 - inverse
        orders.append(order)
        inverses.append(inverse + k * h * w)
    return torch.cat(orders), torch.stack(inverses, 1).flatten()


# A few entries: the four stages of the last couple of input sizes. Multi-scale training
# visits many sizes; an unbounded cache would keep the tensors of every one of them.
@functools.lru_cache(maxsize=16)
def _cached_indices(h: int, w: int, directions: Tuple[str, ...],
                    device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    # Cached tensors must be ordinary ones even when first made under inference_mode:
    # gather / index_select save their index for backward in later training steps.
    with torch.inference_mode(False), torch.no_grad():
        return _indices(h, w, directions, device)


def scan_indices(h: int, w: int, directions: Tuple[str, ...],
                 device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(order, merge)`` of a scan of an h x w map in ``directions``.

    ``order`` (k*h*w,): the row-major map position of each token of the concatenated
    sequence; ``merge`` (h*w*k,): for each map position, the sequence positions holding it
    in the k directions (so that a gather + sum over k merges them).
    """
    for d in directions:
        if d not in DIRECTIONS:
            raise ValueError(f'unknown scan direction {d!r}; choose from {DIRECTIONS}')
    # Recorded into the graph as a few cheap index ops (a cached tensor would be recorded
    # as a constant of the sizes of the example input).
    if recording_graph():
        return _indices(h, w, tuple(directions), device)
    return _cached_indices(h, w, tuple(directions), torch.device(device))
