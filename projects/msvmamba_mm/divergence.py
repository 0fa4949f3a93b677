"""Stop a diverged run before the optimizer applies a nan/inf, with a one-line error.

With a learning rate far too high (``optim_wrapper.optimizer.lr=1e6``, no
``clip_grad``) the loss turns nan within a couple of iterations, and mmengine trains on
to the end with nan weights, exits 0, and (with ``max_keep_ckpts``) replaces the last
finite checkpoint by nan ones. mmdet's ``CheckInvalidLossHook`` is opt-in, mmdet-only,
looks at the loss every 50 iterations and after the step has been applied.

:class:`DivergenceGuardHook` (in every config's ``default_hooks``) checks every
optimizer step of mmpretrain, mmdet and mmseg models alike, *before* it is applied:

* the loss handed to ``OptimWrapper.backward`` (the sum of the loss terms) and the norm
  of the gradients the optimizer is about to apply (a torch optimizer step pre-hook, after
  DDP has averaged them and after ``clip_grad``; under AMP the loss scaler skips steps
  with inf/nan gradients itself and the hook sees the unscaled finite ones);
* when distributed, the ranks agree on the verdict (one ``all_reduce(MAX)`` of one
  number per step), so all skip or stop together;
* a bad step is not applied (every gradient is dropped, so the optimizer and its state
  leave the weights as they were). By default the run then stops: a one-line error names
  the iteration, the non-finite loss terms (from the iteration's log variables) or the
  gradient norm, and the last checkpoint, which is finite: the checkpoint hook
  (:class:`~.checkpoints.PreemptionSafeCheckpointHook`) refuses to write nan/inf weights.
  With ``skip_bad_steps=N`` up to N bad steps in a row are skipped, each logged as a
  warning (like the AMP loss scaler), and the (N+1)-th stops the run.

Skipping keeps the parameters finite, not the BatchNorm statistics that a nan forward
pass updates; if those become nan the following steps are bad too and the run stops.
"""
import math
from typing import Dict, List, Optional

import torch
from mmengine.hooks import Hook
from mmengine.optim import OptimWrapperDict
from mmengine.registry import HOOKS

from .checkpoints import nonfinite_tensors
from .errors import UserError
from .rank_agreement import max_over_ranks, on_any_rank


class TrainingDivergedError(UserError):
    """A loss or gradient became nan/inf; the weights are those before that step."""


def _total_norm(grads: List[torch.Tensor]) -> torch.Tensor:
    if not grads:
        return torch.zeros(())
    if hasattr(torch.nn.utils, 'get_total_norm'):  # torch >= 2.6: fused per device
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g).to(grads[0].device) for g in grads]))


def _nonfinite_terms(outputs, losses_only: bool = False) -> Dict[str, float]:
    """The log variables of ``outputs`` (loss terms, 'loss', accuracies...; with
    ``losses_only`` those mmengine sums into the loss: names containing 'loss') that are
    nan/inf, as floats."""
    bad = {}
    for name, value in (outputs or {}).items():
        if losses_only and 'loss' not in name:
            continue
        if torch.is_tensor(value):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad[name] = float(value.detach().float().mean())
        elif isinstance(value, float) and not math.isfinite(value):
            bad[name] = value
    return bad


@HOOKS.register_module(force=True)
class DivergenceGuardHook(Hook):
    """Stop (or skip) a training step whose loss or gradient is nan/inf before the
    optimizer applies it.

    Args:
        skip_bad_steps (int): Bad steps in a row that are skipped (not applied, logged as
            a warning) before one stops the run. Defaults to 0: the first stops it.
        check_grad (bool): Also check the norm of the gradients. Defaults to True.
        enabled (bool): False turns the hook off (mmengine's Runner accepts
            ``default_hooks.<name>=None`` only for its own hooks). Defaults to True.
    """

    # before the EMA (ABOVE_NORMAL), logger (BELOW_NORMAL) and checkpoint (VERY_LOW)
    # hooks see the iteration
    priority = 'HIGH'

    def __init__(self, skip_bad_steps: int = 0, check_grad: bool = True,
                 enabled: bool = True):
        if skip_bad_steps < 0:
            raise ValueError(f'DivergenceGuardHook: skip_bad_steps must be >= 0, got '
                             f'{skip_bad_steps}')
        self.skip_bad_steps = skip_bad_steps
        self.check_grad = check_grad
        self.enabled = enabled
        self._loss_bad: Optional[torch.Tensor] = None  # since the last step
        self._verdict: Optional[dict] = None  # of this iteration's step, once taken
        self._stepped = False
        self._bad_in_a_row = 0
        self._skipped = 0
        self._undo = []
        self._buffers = []

    # ---------------------------------------------------------------------------------
    def before_train(self, runner) -> None:
        if not self.enabled:
            return
        wrappers = runner.optim_wrapper
        wrappers = list(wrappers.values()) if isinstance(wrappers, OptimWrapperDict) \
            else [wrappers]
        model = getattr(runner.model, 'module', runner.model)
        # BatchNorm statistics: updated by the forward pass, never repaired by a skip
        self._buffers = [(name, b) for name, b in model.named_buffers()
                         if b.is_floating_point()]
        for wrapper in wrappers:
            handle = wrapper.optimizer.register_step_pre_hook(self._before_step)
            backward = wrapper.backward
            # an instance attribute: OptimWrapper.update_params calls self.backward(loss)
            wrapper.backward = self._checking_backward(backward)
            self._undo.append((wrapper, handle))

    def after_train(self, runner) -> None:
        for wrapper, handle in self._undo:
            handle.remove()
            del wrapper.backward  # the class's method again
        self._undo = []

    def _checking_backward(self, backward):
        def checked(loss: torch.Tensor, **kwargs):
            bad = ~torch.isfinite(loss.detach()).all()  # no host sync here
            self._loss_bad = bad if self._loss_bad is None else self._loss_bad | bad
            return backward(loss, **kwargs)
        return checked

    def _before_step(self, optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group['params']
                 if p.grad is not None]
        # The three checks as one vector on the model's device, read with one host
        # synchronisation a step: the loss flag, the gradient norm, the buffers' flag.
        device = grads[0].device if grads else (
            self._buffers[0][1].device if self._buffers else torch.device('cpu'))
        zero = torch.zeros((), device=device)
        loss_flag = zero if self._loss_bad is None else self._loss_bad.to(device).float()
        norm_value = _total_norm(grads).to(device).float() if self.check_grad else zero
        buffers_flag = zero
        if self._buffers:
            buffers_flag = torch.stack([(~torch.isfinite(b).all()).to(device)
                                        for _, b in self._buffers]).any().float()
        loss_bad, norm, buffers_bad = torch.stack([loss_flag, norm_value,
                                                   buffers_flag]).tolist()
        loss_bad, buffers_bad = loss_bad > 0, buffers_bad > 0
        if not self.check_grad:
            norm = None
        grad_bad = norm is not None and not math.isfinite(norm)
        # the names, only for the error message of a bad step
        buffers = nonfinite_tensors(self._buffers) if buffers_bad else []
        # the same verdict on every rank (the loss and the buffers are per rank)
        loss_bad, grad_bad, buffers_bad = max_over_ranks(loss_bad, grad_bad, buffers_bad)
        self._stepped = True
        if not (loss_bad or grad_bad or buffers_bad):
            return None
        self._verdict = dict(loss=bool(loss_bad), grad=bool(grad_bad), norm=norm,
                             buffers=buffers if buffers_bad else None)
        for group in optimizer.param_groups:  # the optimizers skip parameters without grad
            for p in group['params']:
                p.grad = None
        return None

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        if not self.enabled:
            return
        verdict, self._verdict = self._verdict, None
        stepped, self._stepped = self._stepped, False
        self._loss_bad = None  # the loss check covers the backward passes of one step
        if not stepped:
            # no optimizer step this iteration (gradient accumulation, or the AMP loss
            # scaler skipped it): the gradient check comes with the next step
            if on_any_rank(bool(_nonfinite_terms(outputs, losses_only=True))):
                verdict = dict(loss=True, grad=False, norm=None)
        if verdict is None:
            self._bad_in_a_row = 0
            return
        self._bad_in_a_row += 1
        what = self._describe(verdict, _nonfinite_terms(outputs))
        iteration = runner.iter + 1
        # a skipped step leaves nan/inf statistics as they are: nothing to wait for
        if self._bad_in_a_row <= self.skip_bad_steps and verdict.get('buffers') is None:
            self._skipped += 1
            runner.logger.warning(
                f'iteration {iteration}: {what}; the optimizer step is skipped '
                f'({self._bad_in_a_row} of at most {self.skip_bad_steps} bad steps in a '
                f'row; {self._skipped} skipped in this run)')
            return
        last = runner.message_hub.get_info('last_ckpt') or 'none saved yet'
        skipped = (f' after skipping {self._bad_in_a_row - 1} bad steps in a row'
                   if self._bad_in_a_row > 1 else '')
        raise TrainingDivergedError(
            f'training diverged at iteration {iteration}{skipped}: {what}; that step was '
            f'not applied. Last good checkpoint: {last}. Lower the learning rate or set '
            'optim_wrapper.clip_grad (default_hooks.divergence.skip_bad_steps=N skips N '
            'bad steps in a row)')

    @staticmethod
    def _describe(verdict: dict, terms: Dict[str, float]) -> str:
        parts = []
        if terms:
            parts.append('non-finite ' + ', '.join(f'{k}={v}' for k, v in terms.items()))
        elif verdict['loss']:
            parts.append("another process's loss is non-finite")
        if verdict['grad']:
            parts.append(f'gradient norm {verdict["norm"]}')
        buffers = verdict.get('buffers')
        if buffers:
            parts.append(f'{len(buffers)} non-finite buffers (e.g. {", ".join(buffers[:2])})')
        elif buffers is not None:
            parts.append("another process's buffers are non-finite")
        return ', '.join(parts)
