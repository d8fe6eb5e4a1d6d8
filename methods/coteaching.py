"""Co-teaching (Han et al., NeurIPS 2018): two networks teach each other with small-loss samples.

Algorithm 1 of the paper, official code bhanML/Co-teaching @7c7fbe2 (``loss.py`` L8-29,
``main.py`` L133-135, L167-212; notes/baselines.md §5). Every mini-batch, both networks see the
same batch; each ranks the batch by its own per-sample CE and keeps its ``floor(R(T) * B)``
smallest-loss samples; network f is updated on the samples **g** kept and g on those **f** kept
(the cross update). The remember rate at (0-based) epoch T is

    R(T) = 1 - min((T / T_k)^c * tau, tau),   T_k = 10, c = 1,

with tau the assumed noise rate: the nominal rate by default, or the realised rate, or a given
estimate (``tau = "nominal" | "realised" | "0.35"``; PROTOCOL.md §7). Each network's loss is
the plain mean CE over the samples its peer kept. Network 1 is returned (and evaluated).

Per-sample records: ``kept`` = the sample was in the set that updated network 1 during the last
epoch (i.e. kept by network 2), ``score`` = network 2's CE of the sample in that last epoch (the
ranking that decided it; higher = more likely mislabelled), plus ``loss_net1`` / ``loss_net2``.
Co-teaching's selection is per batch, so ``kept`` is a snapshot, not a global removal.

``bench run --fuse K`` trains K seeds' networks fused (bench/fused_runs.py): each run ranks only
its own rows of the fused batch, keeps its own ``floor(R(T) * B)`` (with ``tau=realised`` from
its own realised rate) and gets its own mean losses.

Deviations from the official code (all as PROTOCOL.md §7 asks):
- Loss: the plain mean over the kept samples. The official code divides the already-averaged
  loss by ``num_remember`` a second time (issue #9), a 1/~100 step scale that Adam hides and SGD
  does not.
- Optimiser and schedule: each network has the grid protocol's SGD (lr 0.1, momentum 0.9,
  Nesterov, weight decay 5e-4, warm-up, x0.1 at the milestones), batch 128, protocol
  augmentation, the run's backbone (ResNet-32 on the paper preset); the official code uses Adam
  lr 1e-3 with a linear decay from epoch 80 and beta1 0.9 -> 0.1, no augmentation, a 9-layer CNN.
- Schedule indexing: R(T) follows the paper's Algorithm 1 with T counted from 0 (the first
  epoch keeps everything, tau is reached at epoch T_k). The official ``linspace(0, tau, T_k)``
  with a loop from epoch 1 starts at tau/9 and reaches tau at epoch 9, and for c != 1 ramps to
  tau^c and then jumps to tau. For c != 1 we ramp by (T/T_k)^c, which reaches tau at T_k; the
  paper's exponent form (notes/baselines.md §5: T^c) is not pinned down by our sources. At the
  default c = 1, the only value the paper's experiments and this suite's tables use, the ramps
  have one shape and differ only in where they start: here tau is reached in the 11th epoch
  (T = T_k = 10), in the official code in its 9th, two epochs earlier.
- ``num_remember`` = floor(R * B) as ``int(...)`` in the code, but at least 1 (a last batch of a
  few samples never becomes empty), and floored after adding 1e-9: where float rounding puts a
  whole-number R * B just below it (0.29 * 100 = 28.999999999999996), we keep 29 samples, the
  code 28. Deviation: the official train loader drops the short last batch (``drop_last=True``,
  390 batches on CIFAR; notes/baselines.md §5); every sample is trained on here, as in every
  other method.
- The official code evaluates with dropout left on (a bug of its 9-layer CNN); not applicable.
- Quick preset: T_k = 1 (the paper's T_k/epochs = 10/200 scaled to 20 epochs). ``--epochs``
  does not scale T_k (``bench run`` says so; ``--set coteaching.t_k=...``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from bench.errors import BenchError
from bench.train import set_lr
from methods import register
from methods.base import Method, check_int
from methods.curves import check_rate_option, per_sample_ce, resolve_rate


def remember_rate(epoch: int, tau: float, t_k: int = 10, exponent: float = 1.0) -> float:
    """R(T) = 1 - min((T / T_k)^c * tau, tau) for the 0-based epoch T (Han et al. 2018, Alg. 1)."""
    return 1.0 - min((epoch / t_k) ** exponent * tau, tau)


def num_remember(rate: float, batch: int) -> int:
    """How many of a batch of ``batch`` samples are kept: floor(R * B), at least 1."""
    return max(1, min(batch, math.floor(rate * batch + 1e-9)))


def coteaching_losses(logits1: torch.Tensor, logits2: torch.Tensor, y: torch.Tensor, keep, runs: int = 1):
    """The cross update of one mini-batch.

    Returns ``(loss1, loss2, chosen_by_1, chosen_by_2, ce1, ce2)``: ``chosen_by_k`` are the batch
    positions of network k's ``keep`` smallest losses; ``loss1`` (for network 1) is the mean CE of
    network 1 over ``chosen_by_2`` and ``loss2`` the mean CE of network 2 over ``chosen_by_1``.
    For ``runs`` = K fused runs (``bench run --fuse``; rows n K + k are run k's) each run ranks
    its own rows and keeps its ``keep`` smallest (``keep``: one count, or one per run where each
    run assumes its own noise rate), and the losses are each run's, shape (K,).
    """
    ce1, ce2 = per_sample_ce(logits1, y), per_sample_ce(logits2, y)
    if runs == 1:
        keep = keep if isinstance(keep, int) else keep[0]
        chosen_by_1 = torch.argsort(ce1.detach())[:keep]
        chosen_by_2 = torch.argsort(ce2.detach())[:keep]
        loss1 = ce1[chosen_by_2].mean()
        loss2 = ce2[chosen_by_1].mean()
        return loss1, loss2, chosen_by_1, chosen_by_2, ce1.detach(), ce2.detach()
    keeps = [keep] * runs if isinstance(keep, int) else list(keep)
    run_of_column = torch.arange(runs, device=y.device)
    order1 = torch.argsort(ce1.detach().view(-1, runs), dim=0) * runs + run_of_column  # each run's rows, ranked
    order2 = torch.argsort(ce2.detach().view(-1, runs), dim=0) * runs + run_of_column
    if len(set(keeps)) == 1:  # one count: every run's kept rows at once
        keep = keeps[0]
        chosen_by_1, chosen_by_2 = order1[:keep].flatten(), order2[:keep].flatten()
        loss1 = ce1[chosen_by_2].view(keep, runs).mean(0)
        loss2 = ce2[chosen_by_1].view(keep, runs).mean(0)
        return loss1, loss2, chosen_by_1, chosen_by_2, ce1.detach(), ce2.detach()
    by_1 = [order1[:keeps[k], k] for k in range(runs)]  # run k's own count
    by_2 = [order2[:keeps[k], k] for k in range(runs)]
    loss1 = torch.stack([ce1[chosen].mean() for chosen in by_2])
    loss2 = torch.stack([ce2[chosen].mean() for chosen in by_1])
    return loss1, loss2, torch.cat(by_1), torch.cat(by_2), ce1.detach(), ce2.detach()


def coteaching_step(model1, model2, opt1, opt2, x, y, keep, runs: int = 1):
    """One mini-batch of Co-teaching: both networks forward the batch, each keeps its ``keep``
    smallest losses, and each optimizer steps on the mean CE over the samples **its peer** kept.
    Returns what :func:`coteaching_losses` returns. ``model1``, ``model2``: the networks, or their
    forwards (``Run.step_forwards``)."""
    out = coteaching_losses(model1(x), model2(x), y, keep, runs)
    loss1, loss2 = out[0], out[1]
    opt1.zero_grad(set_to_none=True)
    opt2.zero_grad(set_to_none=True)
    (loss1.sum() + loss2.sum()).backward()  # the two losses touch disjoint parameters (the runs' too)
    opt1.step()
    opt2.step()
    return out


@dataclass
class CoTeachingParams:
    tau: str = "nominal"      # assumed noise rate: "nominal", "realised" or a number
    t_k: int = 10             # epochs over which the forget rate ramps to tau
    exponent: float = 1.0     # c in (T/T_k)^c

    def __post_init__(self):
        self.tau = check_rate_option(self.tau, "coteaching.tau")
        check_int(self.t_k, "coteaching.t_k", 1)
        if not (self.exponent > 0 and math.isfinite(self.exponent)):
            raise BenchError(f"coteaching.exponent must be a positive number, got {self.exponent!r}")


@register
class CoTeaching(Method):
    """Two networks; each one's small-loss samples update the other (report network 1)."""

    name = "coteaching"
    rate_setting = "tau"
    fusable = True  # bench run --fuse: both networks fused, each run ranking its own rows, keeping its own count

    Params = CoTeachingParams

    presets = {"quick": {"t_k": 1}}
    own_stages = ("t_k",)  # the forget rate's ramp, in epochs: --epochs leaves it as it is

    @classmethod
    def display_name(cls, params: dict) -> str:
        return "Co-teaching"

    def fit(self, run):
        p = self.params
        K = run.runs  # a fused group's runs (bench run --fuse): per-sample tables interleave their pools
        taus = [resolve_rate(member, p.tau) for member in run.member_runs]  # "realised": each run's own
        model1, model2 = run.model(), run.model()
        opt1, opt2 = run.sgd(model1.parameters()), run.sgd(model2.parameters())
        loader = run.loader("train")
        is_noisy = torch.as_tensor(np.asarray(run.pooled(lambda r: r.data.is_noisy)), device=run.device)
        n = len(is_noisy)
        kept = torch.zeros(n, dtype=torch.bool, device=run.device)
        last_ce1 = torch.full((n,), float("nan"), device=run.device)
        last_ce2 = torch.full((n,), float("nan"), device=run.device)
        model1.train()
        model2.train()
        forward1, forward2 = run.step_forwards([model1, model2], loader)  # compiled under --compile
        state = {"model1": model1, "model2": model2, "opt1": opt1, "opt2": opt2, "kept": kept,
                 "last_ce1": last_ce1, "last_ce2": last_ce2}

        def step(*plan):  # one mini-batch on a batch plan (captured on CUDA); reads the epoch's rate
            x, y, idx = loader.assemble(*plan)
            with run.autocast():
                keeps = [num_remember(rate, len(y) // K) for rate in rates]
                loss1, loss2, _, chosen_by_2, ce1, ce2 = coteaching_step(forward1, forward2, opt1, opt2, x, y, keeps, K)
            # not ``kept[...] = True``: on CUDA that copies a CPU scalar to the device, which capture refuses
            kept.index_fill_(0, idx[chosen_by_2], True)
            last_ce1[idx] = ce1.to(last_ce1.dtype)
            last_ce2[idx] = ce2.to(last_ce2.dtype)
            # the loss of network 1, of network 2, x the batch size; per run for a fused group
            return torch.stack([loss1.detach(), loss2.detach()], -1).float() * (len(y) // K)

        graphed = run.step_graph(step, name="Co-teaching step", optimizers=[opt1, opt2])
        for epoch in run.epochs(run.spec.epochs, stage="train", state=state):
            lr = run.lr_at(epoch)
            set_lr(opt1, lr)
            set_lr(opt2, lr)
            rates = [remember_rate(epoch, tau, p.t_k, p.exponent) for tau in taus]  # one per run
            kept.zero_()
            totals = torch.zeros(K, 2, device=run.device)  # loss of network 1, of network 2 (x batch size)
            seen = 0
            for plan in loader.plans():
                # the number kept follows the remember rate: a new rate captures the step again
                totals += graphed(*plan, key=tuple(rates))
                seen += len(plan.idx)
            total1, total2 = totals.double().unbind(-1)  # one value per run
            # label precision of the samples that updated network 1 (analysis only, uses is_noisy)
            n_kept = kept.view(-1, K).sum(0)
            kept_clean = (kept & ~is_noisy).view(-1, K).sum(0).float() / n_kept.clamp_min(1)
            extra = {"test_acc_net2": _accuracy(run, model2)} if epoch == run.spec.epochs - 1 else {}
            run.log(epoch, model1, stage="train", lr=lr, loss=total1 / max(seen, 1),
                    loss2=total2 / max(seen, 1), remember_rate=torch.tensor(rates, dtype=torch.float64), kept=n_kept,
                    kept_clean=kept_clean, **extra)
        graphed.release()
        run.record("kept", kept)
        run.record("score", last_ce2)
        run.record("loss_net1", last_ce1)
        run.record("loss_net2", last_ce2)
        return model1


def _accuracy(run, model):
    """Test accuracy of ``model``: a number, or a fused group's one per run."""
    report = run.evaluate(model)
    return report["acc"] if isinstance(report, dict) else torch.tensor([r["acc"] for r in report], dtype=torch.float64)
