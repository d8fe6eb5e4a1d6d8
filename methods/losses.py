"""Shared loss pieces for the loss-reweighting baselines (Focal, Class-Balanced, LDAM-DRW, +DRW).

Public API (all functions take logits ``[B, K]`` and integer targets ``[B]`` on any device):

``class_balanced_weights(counts, beta=0.9999, *, device=None, dtype=float32) -> Tensor[K]``
    Cui et al. 2019, eq. 3 / §4: w_c = (1 - beta) / (1 - beta^n_c), normalised to sum to K.
``ldam_margins(counts, max_m=0.5, *, device=None, dtype=float32) -> Tensor[K]``
    Cao et al. 2019, the LDAM loss: m_c = C / n_c^(1/4), C chosen so that max_c m_c = max_m.
``softmax_focal_per_sample(logits, target, gamma=1.0) -> Tensor[B]``
    Lin et al. 2017, eq. 4 (eq. 5 with alpha = 1) in softmax form: -(1 - p_t)^gamma log p_t.
``sigmoid_focal_per_sample(logits, target, gamma=1.0) -> Tensor[B]``
    One-vs-all sigmoid (focal when gamma > 0) loss summed over the K classes (CB official code).
``ldam_per_sample(logits, target, margins, s=30.0) -> Tensor[B]``
    Cao et al. 2019, the LDAM loss: CE(s * (z - m_y e_y), y).
``reduce_weighted(per_sample, target, class_weights=None, reduction="batch") -> Tensor``
    Batch reduction with per-class weights: ``batch`` = sum_i w_{y_i} l_i / B (official CB code,
    TF SUM_BY_NONZERO_WEIGHTS) or ``weight`` = sum_i w_{y_i} l_i / sum_i w_{y_i} (torch
    ``F.cross_entropy(weight=w)``, used by the LDAM-DRW code for DRW). Without weights both are
    the plain mean.
``REDUCTIONS`` = ("batch", "weight").

Counts are per-class training counts (use the *observed*, noisy-label counts,
``run.data.noisy_counts``: the only counts a method may legitimately know). A class with zero
training samples is treated as a class with one sample (the official formulas divide by zero
there: CB issue #17); it never occurs in a training batch, so only its weight's share of the
normalisation is affected. LDAM's margins are scaled over the classes that have samples, so the
rarest of those gets ``max_m`` as in the official code; an empty class gets ``max_m`` too.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

REDUCTIONS = ("batch", "weight")


def _counts_array(counts) -> np.ndarray:
    """The per-class counts as a float64 vector, checked (finite, non-negative, not empty)."""
    if isinstance(counts, torch.Tensor):
        counts = counts.detach().cpu().numpy()
    arr = np.asarray(counts, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError("class counts are empty")
    if np.any(arr < 0) or not np.all(np.isfinite(arr)):
        raise ValueError(f"class counts must be finite and non-negative, got {arr.tolist()}")
    return arr


def class_balanced_weights(counts, beta: float = 0.9999, *, device=None,
                           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Class-balanced weights (Cui et al., CVPR 2019, eq. 3 and §4), normalised to sum to K.

    The effective number of samples is E_n = (1 - beta^n) / (1 - beta); the weight is its inverse,
    w_c = (1 - beta) / (1 - beta^n_c), then rescaled so that sum_c w_c = K (official code,
    ``src/cifar_main.py:425-430``; the LDAM-DRW code's DRW does the same). beta = 0 gives all ones;
    beta -> 1 approaches inverse frequency. Computed in float64 (beta^n with beta = 0.9999).
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must lie in [0, 1), got {beta}")
    n = np.maximum(_counts_array(counts), 1.0)  # an empty class as one sample (module docstring)
    effective = 1.0 - np.power(beta, n)  # (1 - beta) cancels in the normalisation but keep the formula
    w = (1.0 - beta) / effective
    w = w / w.sum() * len(n)
    return torch.as_tensor(w, dtype=dtype, device=device)


def ldam_margins(counts, max_m: float = 0.5, *, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """LDAM margins (Cao et al., NeurIPS 2019): m_c proportional to n_c^(-1/4), max = max_m.

    As the official code (``losses.py:23-33``): ``m = 1/sqrt(sqrt(n)); m *= max_m / max(m)``, so
    the rarest class gets exactly ``max_m``.
    """
    if not max_m > 0:
        raise ValueError(f"max_m must be positive, got {max_m}")
    raw = _counts_array(counts)
    m = 1.0 / np.sqrt(np.sqrt(np.maximum(raw, 1.0)))
    present = raw > 0  # the rarest class *with samples* gets max_m; empty ones are capped there too
    m = np.minimum(m * (max_m / (m[present].max() if present.any() else m.max())), max_m)
    return torch.as_tensor(m, dtype=dtype, device=device)


def _log_p_true(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits, dim=1).gather(1, target.view(-1, 1)).squeeze(1)


def softmax_focal_per_sample(logits: torch.Tensor, target: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Per-sample softmax focal loss FL(p_t) = -(1 - p_t)^gamma log p_t (Lin et al., ICCV 2017, eq. 4).

    Multi-class softmax form, as the LDAM-DRW code's ``FocalLoss`` (``losses.py:7-21``), alpha = 1.
    Numerically safe: log p_t comes from ``log_softmax`` (never positive, so no tiny negative CE
    as in LDAM-DRW issue #17), 1 - p_t = -expm1(log p_t) is accurate near p_t = 1 and never
    negative, and it is floored at the smallest normal float before the power so that gamma < 1
    has a finite gradient at p_t = 1 (the floor changes the loss by less than that float).
    gamma = 0 returns exactly the per-sample cross-entropy.
    """
    log_pt = _log_p_true(logits, target)
    ce = -log_pt
    if gamma == 0:
        return ce
    one_minus_pt = (-torch.expm1(log_pt)).clamp_min(torch.finfo(log_pt.dtype).tiny)
    return one_minus_pt.pow(gamma) * ce


def one_hot(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Boolean (B, C) one-hot of ``target`` shaped like ``logits``. Unlike ``F.one_hot`` it does not
    read the labels' range back to the host, so it can run inside a captured CUDA graph."""
    return torch.zeros(logits.shape, dtype=torch.bool, device=logits.device).scatter_(1, target.view(-1, 1), True)


def sigmoid_focal_per_sample(logits: torch.Tensor, target: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Per-sample one-vs-all sigmoid loss summed over classes; focal when gamma > 0.

    The CB official code's ``sigmoid`` (gamma = 0) and ``focal`` losses (``src/cifar_main.py:
    226-266``): for each class j, BCE(z_j, [y = j]) times the modulator (1 - p_t,j)^gamma, where
    p_t,j = sigmoid(z_j) for the labelled class and 1 - sigmoid(z_j) for the others. The modulator
    is exp(gamma * log sigmoid(-t z)) with t = +1/-1 (the official log1p(exp(-z)) form overflows
    for very negative logits; ``logsigmoid`` does not).
    """
    onehot = one_hot(target, logits).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    if gamma != 0:
        sign = 2.0 * onehot - 1.0
        bce = torch.exp(gamma * F.logsigmoid(-sign * logits)) * bce
    return bce.sum(dim=1)


def ldam_per_sample(logits: torch.Tensor, target: torch.Tensor, margins: torch.Tensor, s: float = 30.0) -> torch.Tensor:
    """Per-sample LDAM loss (Cao et al., NeurIPS 2019): CE(s * (z - m_y e_y), y).

    Only the labelled class's logit is lowered by its class margin, then everything is scaled by
    s (official ``LDAMLoss``, ``losses.py:35-45``, with a bool mask instead of the deprecated
    uint8 one and no CUDA-only tensor types).
    """
    onehot = one_hot(target, logits)
    shifted = torch.where(onehot, logits - margins[target].unsqueeze(1).to(logits.dtype), logits)
    return F.cross_entropy(s * shifted, target, reduction="none")


def reduce_weighted(per_sample: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | None = None,
                    reduction: str = "batch") -> torch.Tensor:
    """Batch loss from per-sample losses and optional per-class weights w (indexed by ``target``).

    ``batch``: sum_i w_{y_i} l_i / B (official CB code; also the MW-Net/CurveNet sum(w l)/B form).
    ``weight``: sum_i w_{y_i} l_i / sum_i w_{y_i} (torch's weighted CE; the LDAM-DRW code's DRW).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose from {', '.join(REDUCTIONS)}")
    if class_weights is None:
        return per_sample.mean()
    w = class_weights.to(per_sample.device, per_sample.dtype)[target]
    total = (w * per_sample).sum()
    if reduction == "batch":
        return total / per_sample.shape[0]
    return total / w.sum()
