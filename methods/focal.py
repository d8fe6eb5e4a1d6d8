"""Focal loss baseline (Lin, Goyal, Girshick, He, Dollar, "Focal Loss for Dense Object Detection",
ICCV 2017, eq. 4; eq. 5 with alpha_t = 1): FL(p_t) = -(1 - p_t)^gamma log p_t, in its multi-class
softmax form.

This is the "Focal" baseline of the long-tail literature as the LDAM-DRW official code runs it
(``kaidic/LDAM-DRW`` ``losses.py:7-21`` with ``gamma=1`` from ``cifar_train.py:214-215``; PROTOCOL.md
§7): p_t is the softmax probability of the labelled class, alpha = 1, mean over the batch, the
grid protocol of PROTOCOL.md §3 and the plain Linear head.

Deviations from the official code:
- p_t and log p_t come from ``log_softmax`` and 1 - p_t = -expm1(log p_t) >= 0, instead of
  p = exp(-CE) on ``F.cross_entropy``'s output, which can be a tiny negative number and give NaN
  for fractional gamma (LDAM-DRW issue #17; PROTOCOL.md §7 "clamp so (1 - p_t) never goes
  negative"); see :func:`methods.losses.softmax_focal_per_sample`. Same values otherwise.
- Schedule and weight decay are the grid protocol's (5e-4, Nesterov, decays at 80/100 of 200),
  not LDAM-DRW's (2e-4, decays at 160/180).
- No class weights (the LDAM code only weights focal under DRW, computing p = p_t^w there, which
  is not a probability; weighted softmax focal is available as ``cb --set cb.loss=softmax_focal``).
The CB paper's sigmoid focal is ``cb --set cb.loss=focal`` (or ``cb.beta=0`` for unweighted).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.errors import BenchError
from bench.train import train_classifier
from methods import register
from methods.base import Method
from methods.losses import softmax_focal_per_sample


@dataclass
class FocalParams:
    """gamma: focusing parameter (both official CIFAR codes use 1; the detection paper uses 2)."""

    gamma: float = 1.0

    def __post_init__(self):
        if not (isinstance(self.gamma, (int, float)) and 0 <= self.gamma < float("inf")):
            raise BenchError(f"focal.gamma must be a finite number >= 0, got {self.gamma!r}")


@register
class Focal(Method):
    """Softmax focal loss, mean over the batch."""

    name = "focal"
    fusable = True
    Params = FocalParams

    @classmethod
    def display_name(cls, params: dict) -> str:
        gamma = params.get("gamma", 1.0)
        return "Focal" if gamma == 1.0 else f"Focal(gamma={gamma:g})"

    def fit(self, run):
        gamma = float(self.params.gamma)
        model = run.model()
        return train_classifier(run, model, lambda logits, y, idx, epoch:
                                softmax_focal_per_sample(logits, y, gamma).mean(),
                                same_loss_every_epoch=True)
