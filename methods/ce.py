"""Cross-entropy baseline: the grid protocol (PROTOCOL.md §3) with the plain mean CE loss."""

from __future__ import annotations

import torch.nn.functional as F

from bench.train import train_classifier
from methods import register
from methods.base import Method


@register
class CE(Method):
    """Empirical risk minimisation: mean softmax cross-entropy over the batch, no reweighting."""

    name = "ce"
    fusable = True

    @classmethod
    def display_name(cls, params: dict) -> str:
        return "CE"

    def fit(self, run):
        model = run.model()
        return train_classifier(run, model, lambda logits, y, idx, epoch: F.cross_entropy(logits, y),
                                same_loss_every_epoch=True)
