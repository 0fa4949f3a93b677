"""Decisions that every rank of a distributed run must take together.

A rank that leaves the training loop (to stop, or to skip a step) while the others go
on makes them wait in their next collective until a timeout. Where only some ranks can
see the reason (a signal, a nan loss, a failed write on rank 0), the ranks exchange it
first with one ``all_reduce(MAX)`` of a few integers.
"""
from typing import Tuple

import torch
from mmengine.dist import all_reduce, get_world_size


def max_over_ranks(*values: int) -> Tuple[int, ...]:
    """Each of ``values``, maximised over the ranks (``values`` when not distributed)."""
    if get_world_size() == 1:
        return tuple(int(v) for v in values)
    tensor = torch.tensor([int(v) for v in values], dtype=torch.int64)
    all_reduce(tensor, op='max')  # mmengine moves it to the backend's device and back
    return tuple(int(v) for v in tensor.tolist())


def on_any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any."""
    return bool(max_over_ranks(int(flag))[0])
