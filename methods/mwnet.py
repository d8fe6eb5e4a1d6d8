"""Meta-Weight-Net (Shu et al., NeurIPS 2019): a 1-100-1 weighting network on each sample's loss,
learned by the bilevel step of Algorithm 1 (eqs. 3-5) on a clean meta set; PROTOCOL.md §4.

Every iteration runs :class:`methods.meta.MetaStep`: a plain-SGD look-ahead of the classifier on
``sum_i a_i l_i`` at the current learning rate, the meta loss (mean CE of the look-ahead
classifier on the next meta batch, cycled), a step of the weighting net, and the real step with
the weights recomputed under no_grad. Weighting net V: Linear(1, 100), ReLU, Linear(100, 1),
Sigmoid, PyTorch's default init (``resnet.py`` L275-289); its input is the sample's current CE,
detached (``MW-Net.py`` L206).

Two official configurations, both in the CurveNet paper's tables (``mwnet.variant``):

``noise`` (default; the noisy-label code ``MW-Net.py``): V trained by Adam, lr 1e-3, weight decay
          1e-4 (L274-275); unnormalised weights, ``a_i = w_i / B`` (L207, L241).
``imb``   (the long-tail code ``meta-weight-net-class-imbalance.py``): V trained by SGD, lr 1e-5,
          momentum 0.9, Nesterov, weight decay 5e-4 (L110-114); weights normalised by their sum,
          ``a_i = w_i / sum_j w_j`` (L161-168, L195-202; kept unnormalised if the sum is 0).

Tables name them MW-Net(noise) and MW-Net(imb).

Deviations from the official code (all deliberate, PROTOCOL.md §3-§4):
- The classifier follows the grid protocol of §3 (SGD 0.1, momentum 0.9, Nesterov, weight decay
  5e-4, batch 128, warm-up, decays at the first and second milestone) instead of each script's own
  schedule (120 epochs / batch 100 / no Nesterov; long-tail: 100 epochs, decays at 80/90); the
  meta batch is the spec's meta_batch_size (128) instead of 100.
- The long-tail code does not detach V's input in the virtual step (``vnet(cost_v)``, L159), so
  there the loss input also carries gradient into the look-ahead; both variants here use the
  detached loss, as the noisy-label code and PROTOCOL.md §4 do.
- The long-tail code's virtual-step lr lags the classifier's by one epoch at the decays (notes
  §6.2 g); here the look-ahead always uses the current lr.
- Meta batches: both variants cycle through the meta set, reshuffled every pass, as the noisy-label
  code does; the long-tail code draws every meta batch afresh (``next(iter(...))``, L175), i.e.
  with replacement across iterations (notes §3.4).
- Meta-set size: the run's ``meta_per_class`` for both variants (the grid's per-dataset default,
  100 per class on CIFAR-10 and 10 on CIFAR-100, as CurveNet gives every meta method), where the
  long-tail code's default is 10 per class on both datasets (notes §1.3; the long-tail anchor
  table in bench/paper_tables.py asks for 10).
- The weighting-net gradient is computed exactly but by a forward-mode JVP instead of a
  second-order backward (methods/meta.py; ``mwnet.second_order=autograd`` gives the latter).

Options: ``lookahead`` (``sgd``, the code's; ``full`` = with momentum/Nesterov/weight decay),
``skip_layers`` (SLMO 0-3, not in MW-Net's paper), ``hidden`` (the poster's 1-h-1 ablation),
``meta_lr`` / ``meta_weight_decay`` (override the variant's).

Recorded per training sample: ``weight`` = V applied to each sample's final loss (eval mode, no
augmentation, one extra pass after training; the raw sigmoid output, before any normalisation).
Per-epoch history adds ``meta_loss`` and ``mean_weight`` (the mean raw weight of the epoch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.errors import BenchError
from bench.train import set_lr
from methods import register
from methods.base import Method, check_int, check_number
from methods.meta import MetaStep, check_options

VARIANTS = {
    # name: (optimiser, lr, weight decay, normalise weights by their sum)
    "noise": ("adam", 1e-3, 1e-4, False),
    "imb": ("sgd", 1e-5, 5e-4, True),
}


class WeightNet(nn.Module):
    """MW-Net's V: Linear(1, h), ReLU, Linear(h, 1), Sigmoid (``resnet.py`` VNet), default init."""

    def __init__(self, hidden: int = 100):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.Sigmoid())

    def forward(self, loss: torch.Tensor) -> torch.Tensor:
        """Weights (B,) for per-sample losses (B,) or (B, 1)."""
        return self.net(loss.reshape(-1, 1)).squeeze(1)


@dataclass
class MWNetParams:
    variant: str = "noise"
    hidden: int = 100
    lookahead: str = "sgd"
    skip_layers: int = 0
    meta_lr: float | None = None          # None: the variant's (1e-3 noise, 1e-5 imb)
    meta_weight_decay: float | None = None  # None: the variant's (1e-4 noise, 5e-4 imb)
    second_order: str = "jvp"

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise BenchError(f"unknown MW-Net variant {self.variant!r}; choose from {', '.join(VARIANTS)}")
        check_int(self.hidden, "mwnet.hidden", 1)
        check_options(self.lookahead, self.skip_layers, self.second_order)
        for name in ("meta_lr", "meta_weight_decay"):
            if getattr(self, name) is not None:  # None: the variant's value
                check_number(getattr(self, name), f"mwnet.{name}")

    def weight_optimizer(self, params) -> torch.optim.Optimizer:
        kind, lr, wd, _ = VARIANTS[self.variant]
        lr = lr if self.meta_lr is None else float(self.meta_lr)
        wd = wd if self.meta_weight_decay is None else float(self.meta_weight_decay)
        if kind == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=wd)
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd)

    @property
    def normalize(self) -> bool:
        return VARIANTS[self.variant][3]


@torch.no_grad()
def final_losses(run, model: nn.Module, batch_size: int = 1000) -> torch.Tensor:
    """Per-sample CE of the trained model on the whole training pool (observed labels): eval mode,
    no augmentation, in pool order."""
    loader = run.loader("train", batch_size=batch_size, shuffle=False, augment=False)
    was_training = model.training
    model.eval()
    out = torch.cat([F.cross_entropy(model(x), y, reduction="none") for x, y, _ in loader])
    model.train(was_training)
    return out


@register
class MWNet(Method):
    """Meta-Weight-Net: a loss-to-weight MLP meta-learned on clean data every iteration."""

    name = "mwnet"
    uses_meta_set = True
    fusable = True
    Params = MWNetParams

    @classmethod
    def display_name(cls, params: dict) -> str:
        return f"MW-Net({params.get('variant', 'noise')})"

    @classmethod
    def check_spec(cls, spec) -> None:
        if spec.meta_per_class == 0:  # Algorithm 1's meta loss needs clean meta samples
            raise BenchError(f"MW-Net needs a clean meta set: {spec.dataset} gets --meta-per-class 0 "
                             "(give --meta-per-class N, N > 0)")

    def fit(self, run):
        p = self.params
        model = run.model()
        optimizer = run.sgd(model.parameters())
        vnet = run.net(lambda: WeightNet(p.hidden))
        vopt = p.weight_optimizer(vnet.parameters())
        step = MetaStep(model, optimizer, vnet, vopt, lookahead=p.lookahead, skip_layers=p.skip_layers,
                        normalize=p.normalize, second_order=p.second_order, precision=run.spec.precision)
        train, meta_loader = run.loader("train"), run.loader("meta")

        graphed = run.step_graph(step.on_plans(train, meta_loader), name="MW-Net meta step",
                                 optimizers=[optimizer, vopt])
        model.train()
        state = {"model": model, "optimizer": optimizer, "weight_net": vnet, "weight_opt": vopt}
        for epoch in run.epochs(run.spec.epochs, stage="train", state=state):  # resumable after a kill
            lr = run.lr_at(epoch)
            set_lr(optimizer, lr)
            meta = meta_loader.cycle()  # a fresh meta iterator each epoch, as MW-Net.py's train()
            total = torch.zeros(run.runs, 3, device=run.device)  # weighted loss * B, meta loss, weight sum
            seen = steps = 0
            for plan in train.plans():
                total += graphed(*plan, *meta.next_plan())
                seen += len(plan.idx)
                steps += 1
            loss, meta_loss, weight_sum = total.double().unbind(-1)  # one value per run (fused: K)
            run.log(epoch, model, lr=lr, loss=loss / max(seen, 1), meta_loss=meta_loss / max(steps, 1),
                    mean_weight=weight_sum / max(seen, 1))
        graphed.release()
        with torch.no_grad():
            run.record("weight", vnet(final_losses(run, model)))
        return model
