"""Class-Balanced loss baseline (Cui, Jia, Lin, Song, Belongie, "Class-Balanced Loss Based on
Effective Number of Samples", CVPR 2019, eq. 3-4): each sample's loss is multiplied by the weight
of its class, w_c = (1 - beta) / (1 - beta^n_c) (the inverse effective number of samples, eq. 3),
normalised so that sum_c w_c = K (§4, third paragraph; official ``src/cifar_main.py:425-430``).

Defaults (PROTOCOL.md §7): beta = 0.9999 (the official long-tail CIFAR script
``cifar_im_trainval_cb.sh``), softmax cross-entropy, n_c = counts of the *observed* (noisy) labels
of the training pool after the meta split (``run.data.noisy_counts``), computed once, never per
batch (CB issue #17).

Batch averaging (``reduction``): the default ``batch`` is the official code's, sum_i w_{y_i} CE_i / B
(``tf.losses.softmax_cross_entropy(weights=w_y)`` reduces with SUM_BY_NONZERO_WEIGHTS, lines
332-335; the sigmoid/focal paths divide by the number of positives, also B). ``weight`` gives
torch's ``F.cross_entropy(weight=w)``, sum_i w_{y_i} CE_i / sum_i w_{y_i}, the form the LDAM-DRW
and HAR codes use for their "Reweight". The two differ by the batch's mean weight, i.e. an
effective learning-rate factor: under imbalance the head dominates the batch and has small
weights, so ``batch`` trains with a smaller effective step.

Loss variants (``loss``, the official ``--loss-type`` names plus one):
- ``softmax`` (default): weighted softmax CE.
- ``sigmoid``: one-vs-all BCE summed over the K classes, times w_y (official ``sigmoid``).
- ``focal``: the official CB focal loss, which is the *sigmoid* focal loss (Cui et al. eq. 6-7):
  one-vs-all BCE with modulator (1 - p_t,j)^gamma, summed over classes, times w_y; gamma = 1
  (all official CIFAR scripts).
- ``softmax_focal``: the softmax focal loss of :mod:`methods.focal` times w_y (an option of this
  suite: Cui et al.'s class-balanced focal loss, in the paper and the code, is the sigmoid one above).
For ``sigmoid`` and ``focal`` the official code initialises the last-layer bias to -log(K - 1)
(``src/model_base.py:196``) and exempts it from weight decay (lines 344-351); ``sigmoid_init``
(default True) does both, and does nothing for the softmax variants.

Deviations from the official code (TensorFlow 1.14, ResNet-32 v1): the grid protocol of
PROTOCOL.md §3 (weight decay 5e-4 instead of 2e-4, decays x0.1 at the first and second milestone
instead of x0.01 at 160 and 180, per-channel mean/std input scaling instead of x/128 - 1, test
accuracy every epoch), the suite's backbone; the sigmoid focal modulator is computed with
``logsigmoid`` (same value, no overflow); a class with no training sample is counted as one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bench.errors import BenchError
from bench.train import train_classifier
from methods import register
from methods.base import Method
from methods.losses import (
    REDUCTIONS,
    class_balanced_weights,
    reduce_weighted,
    sigmoid_focal_per_sample,
    softmax_focal_per_sample,
)

CB_LOSSES = ("softmax", "sigmoid", "focal", "softmax_focal")


@dataclass
class ClassBalancedParams:
    """beta: effective-number hyperparameter; loss: softmax | sigmoid | focal | softmax_focal;
    gamma: focusing parameter of the focal variants; reduction: batch (sum w l / B, official) or
    weight (sum w l / sum w, torch); sigmoid_init: official last-layer bias init for sigmoid/focal."""

    beta: float = 0.9999
    loss: str = "softmax"
    gamma: float = 1.0
    reduction: str = "batch"
    sigmoid_init: bool = True

    def __post_init__(self):
        if not (isinstance(self.beta, (int, float)) and 0 <= self.beta < 1):
            raise BenchError(f"cb.beta must lie in [0, 1), got {self.beta!r}")
        if self.loss not in CB_LOSSES:
            raise BenchError(f"cb.loss must be one of {', '.join(CB_LOSSES)}, got {self.loss!r}")
        if not (isinstance(self.gamma, (int, float)) and 0 <= self.gamma < float("inf")):
            raise BenchError(f"cb.gamma must be a finite number >= 0, got {self.gamma!r}")
        if self.reduction not in REDUCTIONS:
            raise BenchError(f"cb.reduction must be one of {', '.join(REDUCTIONS)}, got {self.reduction!r}")


def cb_per_sample(logits: torch.Tensor, y: torch.Tensor, loss: str, gamma: float) -> torch.Tensor:
    """The unweighted per-sample loss of a CB variant."""
    if loss == "softmax":
        return torch.nn.functional.cross_entropy(logits, y, reduction="none")
    if loss == "softmax_focal":
        return softmax_focal_per_sample(logits, y, gamma)
    if loss == "sigmoid":
        return sigmoid_focal_per_sample(logits, y, 0.0)
    return sigmoid_focal_per_sample(logits, y, gamma)


@register
class ClassBalanced(Method):
    """Class-balanced re-weighting of a softmax / sigmoid / focal loss from epoch 0."""

    name = "cb"
    Params = ClassBalancedParams
    fusable = True  # bench run --fuse: each run's class weights from its own counts

    @classmethod
    def display_name(cls, params: dict) -> str:
        loss = params.get("loss", "softmax")
        base = "Class-Balanced" if loss == "softmax" else f"Class-Balanced({loss})"
        extras = []
        if params.get("beta", 0.9999) != 0.9999:
            extras.append(f"beta={params['beta']:g}")
        if params.get("reduction", "batch") != "batch":
            extras.append(f"reduction={params['reduction']}")
        if "focal" in loss and params.get("gamma", 1.0) != 1.0:
            extras.append(f"gamma={params['gamma']:g}")
        if loss in ("sigmoid", "focal") and not params.get("sigmoid_init", True):
            extras.append("sigmoid_init=False")
        return base + (f" [{', '.join(extras)}]" if extras else "")

    @classmethod
    def inert_settings(cls, params) -> dict[str, str]:
        """gamma enters only the focal variants (``sigmoid`` is the focal loss at gamma 0);
        sigmoid_init only the sigmoid ones (module docstring)."""
        why = f"with cb.loss={params.loss}"
        inert = {} if "focal" in params.loss else {"gamma": why}
        if params.loss not in ("sigmoid", "focal"):
            inert["sigmoid_init"] = why
        return inert

    def fit(self, run):
        p = self.params
        model = run.model()
        optimizer = None
        if p.loss in ("sigmoid", "focal") and p.sigmoid_init and getattr(model.fc, "bias", None) is not None:
            k = run.num_classes
            with torch.no_grad():
                model.fc.bias.fill_(-math.log(max(k - 1, 1)))
            bias = model.fc.bias
            others = [q for q in model.parameters() if q is not bias]
            optimizer = run.sgd([{"params": others}, {"params": [bias], "weight_decay": 0.0}])

        def weights_of(member):  # w_c from the run's own observed-label counts (eq. 3)
            return class_balanced_weights(member.data.noisy_counts, p.beta, device=member.device)

        def loss_for(member):
            weights = weights_of(member)

            def loss_fn(logits, y, idx, epoch):
                return reduce_weighted(cb_per_sample(logits, y, p.loss, p.gamma), y, weights, p.reduction)
            return loss_fn

        loss_fn = run.per_run(loss_for)  # one per run of a fused group (bench run --fuse)
        model = train_classifier(run, model, loss_fn, optimizer=optimizer, same_loss_every_epoch=True)
        for member in run.member_runs:
            y_train = torch.as_tensor(member.data.train_y, device=member.device, dtype=torch.long)
            member.record("weight", weights_of(member)[y_train])
        return model
