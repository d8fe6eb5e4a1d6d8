"""Shared training-loop pieces: the protocol's schedule and optimiser, evaluation, the plain loop.

Methods call these through :class:`methods.base.Run`; nothing here knows about any one method.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn

from bench.errors import BenchError

# Long-tail literature's groups (Liu et al. 2019, OLTR; Kang et al. 2020): classes with more than
# 100 training samples are "many", 20 to 100 "medium", fewer than 20 "few".
MANY_SHOT_ABOVE = 100
FEW_SHOT_BELOW = 20


class Diverged(BenchError):
    """The training loss became NaN or infinite; the run is recorded as failed, the grid goes on."""

    def __init__(self, epoch: int, reason: str, stage: str = "train"):
        # epochs count from 1 here, as the progress lines do (the history stores them from 0)
        super().__init__(f"diverged at {stage} epoch {epoch + 1}: {reason}")
        self.epoch = epoch
        self.reason = reason


def lr_at(epoch: int, *, lr: float, warmup_epochs: int, milestones: Iterable[int], lr_decay: float) -> float:
    """The grid protocol's learning rate for ``epoch`` (0-based), PROTOCOL.md §3.

    Linear warm-up over the first ``warmup_epochs`` (0.02, 0.04, ..., 0.1 for lr 0.1 and 5 epochs,
    as in the LDAM-DRW code and CurveNet's allocate stage), then ``lr * lr_decay**k`` after the k-th
    milestone. The protocol applies it to every method; CurveNet's own baseline script
    (``recognition_base``) has no warm-up (notes/baselines.md §0, curvenet_mwnet.md §3.2), so the
    suite's CE-style baselines differ from the runs behind the paper's Table 1 in that.
    """
    if epoch < warmup_epochs:
        return lr * (epoch + 1) / warmup_epochs
    return lr * lr_decay ** sum(epoch >= m for m in milestones)


def set_lr(optimizer: torch.optim.Optimizer, value: float) -> None:
    """Set every group's lr; a tensor lr (a captured step's, bench/capture.py) is filled in place,
    so the CUDA graph that reads it sees the new value."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)
        else:
            group["lr"] = value


def shot_groups(train_counts: np.ndarray) -> dict[str, np.ndarray]:
    """Class indices of the many / medium / few-shot groups for per-class training counts."""
    counts = np.asarray(train_counts)
    return {
        "many": np.flatnonzero(counts > MANY_SHOT_ABOVE),
        "medium": np.flatnonzero((counts >= FEW_SHOT_BELOW) & (counts <= MANY_SHOT_ABOVE)),
        "few": np.flatnonzero(counts < FEW_SHOT_BELOW),
    }


def accuracy_report(pred: np.ndarray, target: np.ndarray, num_classes: int, train_counts) -> dict:
    """Top-1 accuracy (%) overall, per class, and per shot group (mean of its classes' accuracies).

    A group with no class is reported as None, never as 0.
    """
    pred, target = np.asarray(pred), np.asarray(target)
    per_class = []
    for c in range(num_classes):
        mask = target == c
        per_class.append(float(100.0 * (pred[mask] == c).mean()) if mask.any() else float("nan"))
    report = {"acc": float(100.0 * (pred == target).mean()), "per_class": per_class}
    per_class_arr = np.array(per_class)
    for group, classes in shot_groups(train_counts).items():
        report[group] = float(np.nanmean(per_class_arr[classes])) if len(classes) else None
    return report


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true labels over ``batches`` of (x, y, idx), in eval mode."""
    was_training = model.training
    model.eval()
    preds, targets = [], []
    for x, y, _ in batches:
        preds.append(model(x).argmax(1))
        targets.append(y)
    model.train(was_training)
    return torch.cat(preds).cpu().numpy(), torch.cat(targets).cpu().numpy()


LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def check_finite(epoch: int, stage: str = "train", **metrics) -> None:
    for name, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise Diverged(epoch, f"{name} is {value}", stage)


def nonfinite_tensor(state: dict) -> str | None:
    """The name of the first floating tensor of ``state`` (a ``state_dict``) that holds a NaN or an
    infinity, else None; one host synchronisation. A loss can stay finite while weights or
    BatchNorm statistics blow up (``--set lr=50``: every test image then gets one class)."""
    floats = [(name, t) for name, t in state.items() if torch.is_tensor(t) and t.is_floating_point()]
    if not floats:
        return None
    finite = torch.stack([torch.isfinite(t).all() for _, t in floats])
    if bool(finite.all()):
        return None
    return floats[int((~finite).nonzero()[0, 0])][0]


def check_finite_model(epoch: int, stage: str, model) -> None:
    """:class:`Diverged` where ``model``'s weights or buffers hold a NaN or an infinity."""
    bad = nonfinite_tensor(model.state_dict())
    if bad is not None:
        raise Diverged(epoch, f"{bad} holds NaN or inf", stage)


def train_classifier(run, model: nn.Module, loss_fn: LossFn, *, epochs: int | None = None,
                     optimizer: torch.optim.Optimizer | None = None, loader=None, stage: str = "train",
                     on_epoch_start: Callable[[int], None] | None = None,
                     same_loss_every_epoch: bool = False, state: dict | None = None) -> nn.Module:
    """The plain supervised loop of the grid protocol, with a method's loss.

    ``loss_fn(logits, y, idx, epoch)`` returns the scalar batch loss; ``idx`` are the batch's
    positions in the training pool (for per-sample state). ``run.run_losses`` calls it: once, or
    for a fused group (``bench run --fuse``, bench/fused_runs.py) once on each run's rows, and
    the step sums the runs' losses. Each epoch is logged (and evaluated)
    through ``run.log`` and checkpointed through ``run.epochs``. A ``loss_fn`` that keeps state of
    its own across epochs (a per-sample tensor it updates, a module) passes it in ``state`` (name
    -> object, as :meth:`methods.base.Run.epochs` takes it), so a resumed run restores it too.

    On CUDA the step is captured as a CUDA graph (bench/capture.py) and captured again each epoch,
    since the loss may read ``epoch`` (DRW); ``same_loss_every_epoch=True`` keeps one capture.
    What that asks of ``loss_fn`` (checked on CPU for every method by tests/test_capture.py):
    tensor ops only, no host synchronisation (no ``.item()``, ``.tolist()``, ``torch.nonzero``,
    Python ``if`` on a tensor), and no output whose shape depends on the data (boolean-mask
    indexing); Python numbers it reads are frozen into the graph at capture, so anything that
    changes between steps must be a device tensor updated in place. A weight of 0 instead of
    dropping a sample keeps shapes fixed.
    """
    optimizer = optimizer or run.sgd(model.parameters())
    loader = loader or run.loader("train")
    epochs = run.spec.epochs if epochs is None else epochs
    model.train()
    forward = run.step_forward(model, loader)  # the model, or under --compile its checked compiled forward

    def step(*plan):  # one SGD step on one batch plan (captured on CUDA); reads the loop's epoch
        x, y, idx = loader.assemble(*plan)
        with run.autocast():  # one loss per run: a fused group's K runs each get their own gradient
            losses = run.run_losses(loss_fn, forward(x), y, idx, epoch)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
        return losses.detach()

    graphed = run.step_graph(step, name=f"{run.spec.method} {stage} step", optimizers=[optimizer])
    for epoch in run.epochs(epochs, stage=stage, state={"model": model, "optimizer": optimizer, **(state or {})}):
        lr = run.lr_at(epoch)
        set_lr(optimizer, lr)
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        total = torch.zeros(run.runs, device=run.device)
        seen = 0
        for plan in loader.plans():
            # the loss may change with the epoch (DRW): a new epoch captures the step again
            total += graphed(*plan, key=None if same_loss_every_epoch else epoch) * len(plan.idx)
            seen += len(plan.idx)
        run.log(epoch, model, stage=stage, lr=lr, loss=total.double() / max(seen, 1))
    graphed.release()
    return model
