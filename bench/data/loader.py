"""A device-resident batch loader with batched, on-device augmentation.

The images stay on the run's device as uint8 ``(N, C, H, W)`` (moved once); each batch is
gathered by index, augmented and normalised with tensor ops, with no DataLoader workers, no PIL
and no per-sample python loop (DESIGN.md "Speed architecture").

Augmentation (``augment=True``) is the CIFAR training transform of MW-Net.py L79-101 and
CurveNet feeder.py L88-105 ("hard"): reflect-pad 4, random crop back to H x W, random
horizontal flip with probability 0.5, then normalise. It is computed as one gather per axis:
output pixel (i, j) of a crop at offset (dy, dx) is input pixel (r(i + dy - 4), r(j' + dx - 4))
with r the reflection at the border and j' = W - 1 - j when flipped (flip after crop, as
torchvision applies RandomCrop then RandomHorizontalFlip). Offsets are uniform in 0..8, as
RandomCrop(32, padding=4) draws them. Nothing is augmented when ``augment=False`` (test time).

Randomness: the per-epoch permutation and the crop offsets and flips all come from the
``torch.Generator`` the caller passes, drawn on that generator's device and moved to the
loader's device. A CPU generator works on any device; a generator on the loader's CUDA device
avoids the small host-to-device copies. Same generator state, same batches. Without a
generator, the loader makes its own, seeded 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

from bench.errors import DataError

PAD = 4


def _reflect(k: torch.Tensor, n: int) -> torch.Tensor:
    """Reflect indices in -PAD..n-1+PAD into 0..n-1 (numpy/torch 'reflect': edge not repeated)."""
    k = k.abs()
    return torch.where(k > n - 1, 2 * (n - 1) - k, k)


class Plan(NamedTuple):
    """The random part of one batch: sample positions, crop offsets (B, 2), flips (B,)."""

    idx: torch.Tensor
    offsets: torch.Tensor
    flip: torch.Tensor


class Loader:
    """Yields ``(x float32 (B, C, H, W) normalised, y int64 (B,), idx int64 (B,))`` on device.

    ``idx`` holds positions 0..N-1 into the ``x``/``y`` given. Every sample is visited exactly
    once per epoch unless ``drop_last`` drops the final short batch.
    """

    def __init__(self, x, y, *, batch_size: int, device, mean, std, augment: bool,
                 shuffle: bool = True, drop_last: bool = False,
                 generator: torch.Generator | None = None, channels_last: bool = False):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch size must be a positive integer, got {batch_size!r}")
        self.device = torch.device(device)
        if isinstance(x, np.ndarray):  # torch cannot wrap a read-only array without a warning
            x = np.ascontiguousarray(x) if x.flags.writeable else np.array(x)
        x = torch.as_tensor(x)
        if x.dtype != torch.uint8 or x.dim() not in (3, 4):
            raise ValueError(f"x must be uint8 (N, H, W[, C]), got {x.dtype} {tuple(x.shape)}")
        if x.dim() == 3:
            x = x.unsqueeze(-1)
        y = torch.as_tensor(np.array(y) if isinstance(y, np.ndarray) else y)
        if y.shape != (x.shape[0],):
            raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
        # one copy to the device, channels first, kept uint8
        self.x = x.to(self.device).permute(0, 3, 1, 2).contiguous()
        self.y = y.to(self.device, torch.int64)
        channels, height, width = self.x.shape[1:]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need {channels} values, got {mean!r} and {std!r}")
        if augment and min(height, width) <= PAD:
            raise ValueError(f"augmentation needs images larger than {PAD} pixels")
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.batch_size = batch_size
        self.augment = bool(augment)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.channels_last = bool(channels_last)
        self._zeros: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def num_samples(self) -> int:
        return int(self.x.shape[0])

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _draw(self, fn, *args, **kwargs) -> torch.Tensor:
        g = self.generator
        drawn = fn(*args, generator=g, device=g.device, **kwargs)
        if drawn.device.type == "cpu" and self.device.type == "cuda":
            # from pinned memory the copy is queued like a kernel; from pageable memory CUDA would
            # wait for the GPU to finish its queue first, every step (the same numbers either way)
            return drawn.pin_memory().to(self.device, non_blocking=True)
        return drawn.to(self.device)

    def order(self) -> torch.Tensor:
        """One epoch's sample order: a permutation from the generator, or 0..N-1 unshuffled."""
        if self.shuffle:
            return self._draw(torch.randperm, self.num_samples)
        return torch.arange(self.num_samples, device=self.device)

    def plan(self, idx: torch.Tensor) -> Plan:
        """Everything random about the batch of positions ``idx``, drawn now: the crop offsets
        (B, 2) and flips (B,) (zeros and False without augmentation). Tensors of fixed shapes, so a
        captured step (bench/capture.py) can take them as inputs and :meth:`assemble` the batch
        inside the graph."""
        B = idx.shape[0]
        if self.augment:
            offsets = self._draw(torch.randint, 0, 2 * PAD + 1, (B, 2))
            flip = self._draw(torch.rand, B) < 0.5
        else:
            offsets, flip = self._no_augment(B)
        return Plan(idx, offsets, flip)

    def _no_augment(self, B: int) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self._zeros.get(B)
        if cached is None:
            cached = self._zeros[B] = (torch.zeros(B, 2, dtype=torch.int64, device=self.device),
                                       torch.zeros(B, dtype=torch.bool, device=self.device))
        return cached

    def assemble(self, idx: torch.Tensor, offsets: torch.Tensor, flip: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch of a :class:`Plan`: gather, crop/flip, normalise (tensor ops only, no host
        synchronisation, so it can run inside a CUDA graph)."""
        xb = self.x.index_select(0, idx)
        if self.augment:
            xb = self.crop_flip(xb, offsets, flip)
        return self.normalise(xb), self.y.index_select(0, idx), idx

    def example(self) -> torch.Tensor:
        """A full batch's images as the steps get them (shape, dtype, memory format: the first
        samples, unaugmented), drawing nothing from the generator."""
        B = min(self.batch_size, self.num_samples)
        return self.assemble(torch.arange(B, device=self.device), *self._no_augment(B))[0]

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The (augmented, normalised) batch of the samples at positions ``idx``."""
        return self.assemble(*self.plan(idx))

    def plans(self) -> Iterator[Plan]:
        """One epoch of batch plans (what :meth:`__iter__` assembles)."""
        order, bs = self.order(), self.batch_size
        for b in range(len(self)):
            yield self.plan(order[b * bs:(b + 1) * bs])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for plan in self.plans():
            yield self.assemble(*plan)

    def cycle(self) -> Cycle:
        """Endless batches over epochs (e.g. the meta set), a fresh permutation each pass.

        The returned :class:`Cycle` has ``state_dict``/``load_state_dict`` so a checkpoint can
        resume it mid-pass, batch for batch.
        """
        if len(self) == 0:
            raise DataError(f"cannot cycle over {self.num_samples} samples with batch size "
                            f"{self.batch_size} (drop_last={self.drop_last}); a meta-learning "
                            "method needs a non-empty meta set (--meta-per-class > 0)")
        return Cycle(self)

    def normalise(self, xb: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float32 ``(x / 255 - mean) / std`` (ToTensor + Normalize)."""
        out = xb.float().div_(255.0).sub_(self._mean).div_(self._std)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out

    def crop_flip(self, xb: torch.Tensor, offsets: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """Per-sample reflect-pad-4 crop at ``offsets`` (B, 2) in 0..8 and horizontal flip where
        ``flip`` (B,), batched (uint8 in and out)."""
        B, C, H, W = xb.shape
        rows = torch.arange(H, device=self.device)
        cols = torch.arange(W, device=self.device).expand(B, W)
        cols = torch.where(flip[:, None], W - 1 - cols, cols)
        rows = _reflect(rows[None, :] + offsets[:, :1] - PAD, H)  # (B, H)
        cols = _reflect(cols + offsets[:, 1:] - PAD, W)  # (B, W)
        out = xb.gather(2, rows[:, None, :, None].expand(B, C, H, W))
        return out.gather(3, cols[:, None, None, :].expand(B, C, H, W))


class Cycle:
    """Endless iterator over a loader's epochs whose position can be saved and restored."""

    def __init__(self, loader: Loader):
        self.loader = loader
        self._order: torch.Tensor | None = None
        self._batch = 0

    def __iter__(self) -> Cycle:
        return self

    def next_plan(self) -> Plan:
        """The next batch's :class:`Plan` (``next(cycle)`` assembles it)."""
        if self._order is None or self._batch >= len(self.loader):
            self._order, self._batch = self.loader.order(), 0
        bs = self.loader.batch_size
        idx = self._order[self._batch * bs:(self._batch + 1) * bs]
        self._batch += 1
        return self.loader.plan(idx)

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.loader.assemble(*self.next_plan())

    def state_dict(self) -> dict:
        return {"order": None if self._order is None else self._order.cpu(), "batch": self._batch}

    def load_state_dict(self, state: dict) -> None:
        order = state["order"]
        self._order = None if order is None else order.to(self.loader.device)
        self._batch = state["batch"]
