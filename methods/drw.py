"""Deferred re-weighting (DRW; Cao et al., NeurIPS 2019, §3.3 and Algorithm 1), as a reusable piece.

DRW trains with unweighted loss until ``switch_epoch`` (the first learning-rate drop), then
multiplies each sample's loss by the class-balanced weight of its (observed) label,
w_c = (1 - beta) / (1 - beta^n_c) normalised to sum to K (Cui et al. 2019, eq. 3). The paper's
Algorithm 1 writes inverse-frequency weights; the official code (``kaidic/LDAM-DRW``
``cifar_train.py:199-206``) uses class-balanced weights with beta = 0.9999, which this follows
(the author: "0.9999 is already very close to inverse of frequency", LDAM-DRW issues #3/#19).

Deviations from the official code: the switch is an explicit ``epoch >= switch_epoch`` test, not
``betas[epoch // 160]`` (which indexes out of range past twice the switch epoch, as in the HAR
code); the switch epoch is the protocol's first lr drop (``run.first_drop``: 80 of 200 in the
paper preset, 8 of 20 in quick) instead of LDAM's 160 of 200 (PROTOCOL.md §7).

Public API
----------
``drw_weights(epoch, switch_epoch, counts, beta=0.9999, *, device=None) -> Tensor[K] | None``
    None before ``switch_epoch`` (plain loss), the class-balanced weights from it on.
``DRW(counts, switch_epoch, beta=0.9999, reduction="weight", device=None)``
    ``DRW.from_run(run, beta=0.9999, switch_epoch=None, reduction="weight")`` uses
    ``run.data.noisy_counts`` and ``run.first_drop``.
    ``.active(epoch) -> bool``; ``.class_weights(epoch) -> Tensor[K] | None``;
    ``.sample_weights(y, epoch) -> Tensor[B]`` (w_{y_i}, ones before the switch; multiply into
    per-sample weights of another method, e.g. CurveNet "+DRW");
    ``.reduce(per_sample_loss, y, epoch) -> scalar`` (the reweighted batch loss, with the
    ``reduction`` of :func:`methods.losses.reduce_weighted`: ``weight`` = torch's weighted mean,
    as the LDAM-DRW code, or ``batch`` = sum(w l)/B).
The weights are computed once and cached on the device.
"""

from __future__ import annotations

import torch

from methods.losses import REDUCTIONS, class_balanced_weights, reduce_weighted


def drw_weights(epoch: int, switch_epoch: int, counts, beta: float = 0.9999, *, device=None) -> torch.Tensor | None:
    """The DRW class weights for ``epoch``: None before ``switch_epoch``, CB weights from it on."""
    if epoch < switch_epoch:
        return None
    return class_balanced_weights(counts, beta, device=device)


class DRW:
    """Deferred class-balanced re-weighting switched on at ``switch_epoch`` (0-based, inclusive)."""

    def __init__(self, counts, switch_epoch: int, beta: float = 0.9999, reduction: str = "weight", device=None):
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; choose from {', '.join(REDUCTIONS)}")
        if switch_epoch < 0:
            raise ValueError(f"switch_epoch must be >= 0, got {switch_epoch}")
        self.switch_epoch = int(switch_epoch)
        self.beta = float(beta)
        self.reduction = reduction
        self.weights = class_balanced_weights(counts, beta, device=device)

    @classmethod
    def from_run(cls, run, beta: float = 0.9999, switch_epoch: int | None = None, reduction: str = "weight") -> DRW:
        """DRW on the run's observed-label counts, switching at the protocol's first lr drop."""
        switch = run.first_drop if switch_epoch is None or switch_epoch < 0 else switch_epoch
        return cls(run.data.noisy_counts, switch, beta, reduction, device=run.device)

    def active(self, epoch: int) -> bool:
        return epoch >= self.switch_epoch

    def class_weights(self, epoch: int) -> torch.Tensor | None:
        return self.weights if self.active(epoch) else None

    def sample_weights(self, y: torch.Tensor, epoch: int) -> torch.Tensor:
        if not self.active(epoch):
            return torch.ones(y.shape[0], device=y.device, dtype=self.weights.dtype)
        return self.weights.to(y.device)[y]

    def reduce(self, per_sample: torch.Tensor, y: torch.Tensor, epoch: int) -> torch.Tensor:
        return reduce_weighted(per_sample, y, self.class_weights(epoch), self.reduction)
