"""LDAM-DRW baseline (Cao, Wei, Gaidon, Arechiga, Ma, "Learning Imbalanced Datasets with
Label-Distribution-Aware Margin Loss", NeurIPS 2019).

- LDAM loss: L = -log( e^{s(z_y - m_y)} / (e^{s(z_y - m_y)} + sum_{j != y} e^{s z_j}) ),
  margins m_c = C / n_c^{1/4} with C set so that the rarest class gets ``max_m`` = 0.5, logit
  scale s = 30 (official ``losses.py:23-45``, ``cifar_train.py:213``).
- Cosine classifier: the backbone's ``fc`` is replaced by :class:`NormedLinear`, z_j = cos(f, W_j)
  on the pooled features, no bias (official ``models/resnet_cifar.py:37-46``; ``use_norm=True``
  whenever the loss is LDAM, ``cifar_train.py:106``). Logits lie in [-1, 1], hence s.
- DRW (Algorithm 1): unweighted until the first learning-rate drop, then each sample's
  loss is weighted by the class-balanced weight of its label, beta = 0.9999, normalised to sum
  to K, as torch's ``F.cross_entropy(weight=w)`` (sum w l / sum w): :class:`methods.drw.DRW`.
Counts n_c (margins and DRW weights) are the observed-label counts of the training pool after the
meta split (``run.data.noisy_counts``, PROTOCOL.md §7).

Deviations from the official code:
- DRW switches at the protocol's first lr drop (``run.first_drop``: epoch 80 of 200 in the paper
  preset, 8 of 20 in quick) instead of 160 of 200 (LDAM's own first drop; PROTOCOL.md §7), with
  an ``epoch >= switch`` test instead of ``betas[epoch // 160]``. ``drw_epoch`` overrides it;
  ``drw=False`` gives plain LDAM.
- Schedule: the grid protocol (weight decay 5e-4 instead of 2e-4, Nesterov, x0.1 at 80 and 100
  instead of x0.01 at 160 and 180). The paper preset's 5-epoch warm-up (0.02, ..., 0.1) is LDAM's.
- Warm-up: the protocol's per-epoch linear warm-up, as LDAM's code. The quick preset's warm-up is
  2 epochs because 5/200 scaled to 20 epochs rounds to none, and a 1-epoch one runs epoch 0 at
  the full lr too, and with s = 30 the first full-lr steps push the rarest class's weight column to the far
  side of the (non-negative, post-ReLU) feature cone and inflate its norm to about 22 (2 to 8 for
  the others), which freezes its direction (the step on a normalised column scales as
  1 / norm^2): that class ended at 0% test accuracy in 2 of 3 seeds (fmnist-mini, imbalance 50,
  no noise), with or without DRW. See bench/spec.py.
- Bool mask in ``torch.where`` instead of the deprecated uint8 one; no CUDA-only tensor types.
- A class with no training sample is counted as one (the official margin would be infinite).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.errors import BenchError
from bench.train import train_classifier
from methods import register
from methods.base import Method
from methods.drw import DRW
from methods.losses import REDUCTIONS, ldam_margins, ldam_per_sample


class NormedLinear(nn.Module):
    """Cosine classifier: z = normalize(x) @ normalize(W) columnwise, no bias (LDAM-DRW code).

    ``weight`` has shape (in_features, out_features) as in the official code, initialised with
    ``uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)`` (unit-norm random columns).
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        with torch.no_grad():
            self.weight.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias=False"

    @classmethod
    def fused(cls, parts: list, layout: str) -> FusedNormedLinear:
        """K of these as one (``bench run --fuse``, bench/fused.py): weights stacked (K D, O)."""
        fused = FusedNormedLinear(parts[0].in_features, parts[0].out_features, len(parts), layout)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([p.weight.detach() for p in parts]))
        return fused.to(parts[0].weight.device)


class FusedNormedLinear(nn.Module):
    """K cosine classifiers of a fused group: run k's features (rows ``n K + k``, or block k of the
    runs layout ``(N, K D)``) against run k's weight columns, logits as rows ``(N K, O)``."""

    def __init__(self, in_features: int, out_features: int, runs: int, layout: str):
        super().__init__()
        self.in_features, self.out_features, self.runs, self.layout = in_features, out_features, runs, layout
        self.weight = nn.Parameter(torch.empty(runs * in_features, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        K = self.runs
        n = x.shape[0] if self.layout == "runs" else x.shape[0] // K
        features = F.normalize(x.reshape(n, K, self.in_features), dim=2)
        weight = F.normalize(self.weight.view(K, self.in_features, self.out_features), dim=1)
        return torch.einsum("nkd,kdo->nko", features, weight).reshape(n * K, self.out_features)


def use_normed_linear(model: nn.Module) -> nn.Module:
    """Replace ``model.fc`` (a Linear on ``model.features``) by a NormedLinear, on the same device."""
    fc = model.fc
    in_features = fc.in_features if hasattr(fc, "in_features") else fc.weight.shape[1]
    out_features = fc.out_features if hasattr(fc, "out_features") else fc.weight.shape[0]
    model.fc = NormedLinear(in_features, out_features).to(fc.weight.device, fc.weight.dtype)
    return model


@dataclass
class LDAMDRWParams:
    """max_m: largest margin (rarest class); s: logit scale; drw: deferred re-weighting on/off;
    beta: DRW's class-balanced beta; drw_epoch: switch epoch, -1 = the protocol's first lr drop;
    reduction: DRW batch averaging, weight (torch weighted mean, official) or batch (sum w l / B)."""

    max_m: float = 0.5
    s: float = 30.0
    drw: bool = True
    beta: float = 0.9999
    drw_epoch: int = -1
    reduction: str = "weight"

    def __post_init__(self):
        if not (isinstance(self.max_m, (int, float)) and 0 < self.max_m < float("inf")):
            raise BenchError(f"ldam_drw.max_m must be a positive number, got {self.max_m!r}")
        if not (isinstance(self.s, (int, float)) and 0 < self.s < float("inf")):
            raise BenchError(f"ldam_drw.s must be a positive number, got {self.s!r}")
        if not (isinstance(self.beta, (int, float)) and 0 <= self.beta < 1):
            raise BenchError(f"ldam_drw.beta must lie in [0, 1), got {self.beta!r}")
        if not (isinstance(self.drw_epoch, int) and self.drw_epoch >= -1):
            raise BenchError(f"ldam_drw.drw_epoch must be an epoch >= 0 or -1 (first lr drop), got {self.drw_epoch!r}")
        if self.reduction not in REDUCTIONS:
            raise BenchError(f"ldam_drw.reduction must be one of {', '.join(REDUCTIONS)}, got {self.reduction!r}")


@register
class LDAMDRW(Method):
    """LDAM loss on a cosine classifier, with deferred class-balanced re-weighting."""

    name = "ldam_drw"
    Params = LDAMDRWParams
    fusable = True  # bench run --fuse: each run's margins and DRW weights from its own counts

    @classmethod
    def display_name(cls, params: dict) -> str:
        base = "LDAM-DRW" if params.get("drw", True) else "LDAM"
        defaults = LDAMDRWParams()
        extras = [f"{k}={params[k]}" for k in ("max_m", "s", "beta", "drw_epoch", "reduction")
                  if k in params and params[k] != getattr(defaults, k)]
        return base + (f" [{', '.join(extras)}]" if extras else "")

    @classmethod
    def inert_settings(cls, params) -> dict[str, str]:
        """Without DRW the loss is plain LDAM: DRW's beta, switch epoch and batch averaging unused."""
        return {} if params.drw else dict.fromkeys(("beta", "drw_epoch", "reduction"), "with ldam_drw.drw=False")

    def fit(self, run):
        p = self.params
        s = float(p.s)

        def drw_for(member):  # drw=False: a switch after the last epoch (plain LDAM); -1: the first lr drop
            return DRW.from_run(member, p.beta, switch_epoch=p.drw_epoch if p.drw else member.spec.epochs,
                                reduction=p.reduction)

        def loss_for(member):  # margins and DRW weights from the run's own class counts
            margins = ldam_margins(member.data.noisy_counts, p.max_m, device=member.device)
            drw = drw_for(member)

            def loss_fn(logits, y, idx, epoch):
                return drw.reduce(ldam_per_sample(logits, y, margins, s), y, epoch)
            return loss_fn

        loss_fn = run.per_run(loss_for)  # one per run of a fused group (bench run --fuse)
        model = train_classifier(run, run.model(adapt=use_normed_linear), loss_fn)
        for member in run.member_runs:
            y_train = torch.as_tensor(member.data.train_y, device=member.device, dtype=torch.long)
            member.record("weight", drw_for(member).sample_weights(y_train, member.spec.epochs - 1))
        return model
