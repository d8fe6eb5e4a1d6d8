"""Captured training steps (CUDA graphs) and mixed precision: the suite's GPU speed layer.

A training step here is a function of a few device tensors of fixed shapes (the batch *plans* of
``bench.data.Loader``: sample positions, crop offsets, flips) that assembles its batches, runs
forward and backward and steps the optimisers, all with tensor ops and no host synchronisation.
:class:`StepGraph` runs such a function

* eagerly, on CPU, with ``--no-graph``, or where capture failed;
* on CUDA, as a CUDA graph: the first ``warmup`` calls run eagerly on a side stream (they are
  real training steps; they also create the optimiser state and the lazy CUDA handles), the next
  call with the first call's input shapes (not a short last batch) captures the step into a
  ``torch.cuda.CUDAGraph`` on the step's own device and every later call copies its inputs into
  the graph's static input tensors and replays it. One launch per step instead of hundreds,
  which is what makes ResNet-32 at batch 128 (and CurveNet's probe at batch 16) fast.

A call whose inputs have other shapes than the captured ones (an epoch's last, short batch) runs
eagerly; a call with another ``key`` (a loss that changes with the epoch, e.g. DRW) captures the
step again. If capture itself fails (an op that synchronises, an unsupported kernel) the step
prints one line, ``bench: CUDA graph capture of <name> failed (<reason>); running it eagerly``,
and stays eager; the run's results do not depend on it.

What capture needs from the optimisers (done by :func:`prepare_optimizer`, before the first step
so that every step of a run uses the same update kernels): ``torch.optim.SGD`` runs ``fused`` with
the learning rate as a 0-dim tensor on the device, which ``bench.train.set_lr`` fills in place,
so the schedule changes the lr without capturing again; Adam/AdamW run ``capturable`` (their step
counters on the device). Other optimisers are left alone and make capture fail (eager fallback).

Precision (``--precision``): ``fp32`` (default; the papers' numbers) or ``bf16``, i.e. forward
passes under ``torch.autocast(dtype=bfloat16)`` with master weights, gradients and optimiser
state in float32 (no loss scaling is needed for bf16). It is part of the run's spec and key.
Autocast's weight cache is off (``cache_enabled=False``), as graph capture requires.

cuDNN's algorithm search: on CUDA, training and ``bench timing`` set
``torch.backends.cudnn.benchmark`` (:func:`search_conv_algorithms`): a step's shapes are fixed, so
cuDNN times its convolution algorithms once per shape (in the eager warm-up calls, before capture)
and keeps the fastest. On the H200 (ResNet-32, batch 128, captured; session 11) it took the CE step
from 5.36 to 4.52 ms in fp32 (3.88 to 3.67 ms in bf16, within the 4% the CE step varied between
the two device calls compared), MW-Net from 18.0 to 15.4 ms (fp32). The choice is made by
timing, so two processes may pick different algorithms: with cuDNN's non-deterministic backward
kernels, a CUDA run is at best reproducible up to float rounding, not bit for bit (on the CPU it
is bit for bit; tests/test_fault_injection.py; README, Scaling out).

Deterministic kernels (``bench run --deterministic``, :func:`run_kernels`): for a CUDA run that is
reproducible bit for bit on the same hardware and software, the run turns the search off and asks
for kernels that give the same bits for the same input: ``torch.use_deterministic_algorithms``
(ops with a deterministic variant switch to it, e.g. ``index_add_`` and the embedding's backward;
an op without one raises a ``RuntimeError`` naming itself, which fails the run with that reason),
``torch.backends.cudnn.deterministic`` and cuBLAS's fixed workspace ``CUBLAS_WORKSPACE_CONFIG=
:4096:8`` (torch's reproducibility notes; cuBLAS reads it when it starts, so ``bench run`` sets it
before any CUDA work). Captured steps, bf16 and ``--compile`` (Inductor's deterministic mode) work
under it. tests/test_deterministic.py checks, on CPU, that no op any method runs is one of those
torch lists as having no deterministic CUDA kernel, and on CUDA that two runs give the same bits.

Memory format: on CUDA, models and batches are ``channels_last`` (cuDNN's fast layout for
convolutions, most of all with bf16). On CPU they stay contiguous: there channels_last made the
small CNN's forward faster but its backward slower, and the meta steps' ratios to CE worse
(session 2: CE 18.9 -> 17.0 ms, MW-Net 77.5 -> 74.8 ms per step).

Results: a captured step computes what the eager step computes, up to float rounding (kernel
choice can differ); tests/test_capture.py checks parameters after several steps against the eager
step (on CUDA where present) and that the plan/assemble path equals the plain loader path.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Sequence

import torch

from bench.errors import BenchError

PRECISIONS = ("fp32", "bf16")

# capturable Adam warns on every eager step (warm-up, short batches); that is expected here
warnings.filterwarnings("ignore", message=".*capturable=True.*running without", category=UserWarning)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise BenchError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    return precision


def autocast(device: torch.device, precision: str):
    """The forward-pass context of ``precision``: bf16 autocast, or nothing for fp32."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, cache_enabled=False)


def search_conv_algorithms(device, enabled: bool = True) -> None:
    """On CUDA, let cuDNN time its convolution algorithms per shape and keep the fastest
    (``torch.backends.cudnn.benchmark``; module docstring). Nothing on other devices."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = bool(enabled)


def searches_conv_algorithms(device) -> bool:
    """Whether cuDNN's algorithm search is on for ``device`` (always False off CUDA)."""
    return torch.device(device).type == "cuda" and bool(torch.backends.cudnn.benchmark)


CUBLAS_DETERMINISTIC_WORKSPACE = ":4096:8"  # torch's reproducibility notes (CUDA >= 10.2)


@contextlib.contextmanager
def run_kernels(device, *, deterministic: bool = False, search: bool = True):
    """The kernels this process uses for a run on ``device`` while the context is open; torch's
    settings are restored on exit. By default cuDNN searches its convolution algorithms on CUDA
    (``search``, :func:`search_conv_algorithms`); with ``deterministic`` only deterministic
    kernels run, without the search (module docstring, "Deterministic kernels")."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    # torch.use_deterministic_algorithms imports torch._inductor the first time (about 1 s on a
    # CPU), so it is called only to change the setting: a Ctrl-C in that import, and then again
    # in the restore, gave a traceback instead of bench's one line
    changed = deterministic != saved[0] or (deterministic and saved[1])
    try:
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC_WORKSPACE)
        if changed:
            torch.use_deterministic_algorithms(deterministic)
        torch.backends.cudnn.deterministic = deterministic
        search_conv_algorithms(device, search and not deterministic)
        yield
    finally:
        if changed:
            torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


def deterministic_kernels() -> bool:
    """Whether this process runs deterministic kernels only (:func:`run_kernels`)."""
    return torch.are_deterministic_algorithms_enabled()


def prepare_optimizer(optimizer: torch.optim.Optimizer, device: torch.device) -> bool:
    """Make ``optimizer.step()`` capturable on ``device`` (module docstring); False if it cannot be.

    Idempotent. Numerically the same update rule (torch's fused/capturable kernels of the same
    optimiser), so a run does not change meaning when its steps are captured.
    """
    device = torch.device(device)
    if isinstance(optimizer, torch.optim.SGD):
        for group in optimizer.param_groups:
            lr = group["lr"]
            if not (isinstance(lr, torch.Tensor) and _same_device(lr.device, device)):
                group["lr"] = torch.tensor(float(lr), dtype=torch.float32, device=device)
            group["fused"], group["foreach"] = True, False
        return True
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        for group in optimizer.param_groups:
            group["capturable"] = True
            for p in group["params"]:
                step = optimizer.state.get(p, {}).get("step")
                if isinstance(step, torch.Tensor) and step.device != p.device:
                    optimizer.state[p]["step"] = step.to(p.device, torch.float32)
        return True
    return False


def _shapes(inputs) -> list:
    return [(t.shape, t.dtype, t.device) if isinstance(t, torch.Tensor) else type(t) for t in inputs]


def _same_device(actual: torch.device, wanted: torch.device) -> bool:
    """``actual`` (a tensor's device, always indexed on CUDA) is ``wanted`` ("cuda" = any index:
    the current device, where a tensor made for "cuda" lands). ``cuda:0 != cuda`` for torch."""
    return actual.type == wanted.type and (wanted.index is None or actual.index == wanted.index)


Backend = Callable[["StepGraph", Sequence[torch.Tensor]], object]


class StepGraph:
    """``step(*inputs, key=None)`` = ``fn(*inputs)``, replayed as a CUDA graph where possible.

    Parameters
    ----------
    fn          the step: tensors in, a tensor / tuple / dict of tensors (or None) out. It must not
                synchronise with the host (no ``.item()``, no data-dependent Python branches).
    name        for the fallback message.
    device      where the step runs; capture only on CUDA.
    enabled     capture at all (False: always eager; ``--no-graph``).
    optimizers  the optimisers ``fn`` steps; prepared by :func:`prepare_optimizer` on first use.
    warmup      eager calls before each capture (at least 1).

    The outputs of a replayed step are the graph's static tensors: read or copy them before the
    next call. ``mode`` is ``"eager"``, ``"captured"`` or ``"eager (capture failed: ...)"``.
    """

    def __init__(self, fn: Callable, *, name: str, device, enabled: bool = True,
                 optimizers: Sequence[torch.optim.Optimizer] = (), warmup: int = 2):
        self.fn = fn
        self.name = name
        self.device = torch.device(device)
        self.enabled = bool(enabled) and self.device.type == "cuda"
        self.optimizers = list(optimizers)
        self.warmup = max(1, int(warmup))
        self.failure: str | None = None
        self.captures = 0       # how many graphs were captured (a new key captures again)
        self.replays = 0
        self._prepared = False
        self._key = None
        self._calls = 0         # eager calls since the key last changed
        self._shapes = None     # the inputs' shapes at the key's first call: the ones to capture
        self._stream = None     # the side stream of the warm-up calls (one: the allocator caches per stream)
        self._graph = None
        self._static_in: list[torch.Tensor] = []
        self._static_out = None

    @property
    def mode(self) -> str:
        if self.failure is not None:
            return f"eager (capture failed: {self.failure})"
        return "captured" if self.enabled else "eager"

    def __call__(self, *inputs: torch.Tensor, key=None):
        if not self.enabled:
            return self.fn(*inputs)
        # graphs capture on the current device's stream: make it this step's (cuda:1 in a worker)
        with torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext():
            return self._call(inputs, key)

    def _call(self, inputs, key):
        if not self._prepared:
            self._prepare()
        if key != self._key:
            self._key, self._calls, self._graph, self._static_out = key, 0, None, None
            self._shapes = None
        if self._shapes is None:
            self._shapes = _shapes(inputs)
        if self._graph is not None:
            if not self._matches(inputs):
                return self.fn(*inputs)  # e.g. the epoch's last, short batch
            for static, new in zip(self._static_in, inputs):
                static.copy_(new)
            self._replay()
            return self._static_out
        if self._calls < self.warmup or not self._capturable(inputs) or _shapes(inputs) != self._shapes:
            self._calls += 1  # warm-up, or a short batch at capture time: captured on a full one
            return self._warm(inputs)
        return self._capture(inputs)

    def release(self) -> None:
        """Free the captured graph and its static tensors (the loop is over); a later call captures
        again. ``mode`` keeps saying how the step ran."""
        self._graph = self._static_out = None
        self._static_in = []
        self._key, self._calls, self._shapes = None, 0, None

    # ------------------------------------------------------------------------ internals
    def _prepare(self) -> None:
        self._prepared = True
        for opt in self.optimizers:
            if not prepare_optimizer(opt, self.device):
                self._fail(f"{type(opt).__name__} cannot be captured")
                return

    @staticmethod
    def _capturable(inputs) -> bool:
        return all(isinstance(t, torch.Tensor) for t in inputs)

    def _matches(self, inputs) -> bool:
        return len(inputs) == len(self._static_in) and all(
            t.shape == s.shape and t.dtype == s.dtype and t.device == s.device
            for t, s in zip(inputs, self._static_in))

    def _warm(self, inputs):
        """An eager step on a side stream (graph capture wants its warm-up off the main stream)."""
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        stream = self._stream
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            out = self.fn(*inputs)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        return out

    def _record(self, static_in: list[torch.Tensor]):
        """Capture ``fn`` on the static inputs: ``(replay, static outputs)``. Nothing runs yet."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.fn(*static_in)
        return graph.replay, static_out

    def _capture(self, inputs):
        static_in = [t.clone() for t in inputs]
        try:
            replay, static_out = self._record(static_in)
        except Exception as exc:  # noqa: BLE001 - any capture error means: run eagerly
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            text = str(exc).splitlines()[0] if str(exc) else ""
            self._fail(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
            return self.fn(*inputs)
        self._graph, self._static_in, self._static_out = replay, static_in, static_out
        self.captures += 1
        self._replay()  # capturing records the step; replaying it does this call's step
        return self._static_out

    def _replay(self) -> None:
        self._graph()
        self.replays += 1

    def _fail(self, reason: str) -> None:
        self.enabled = False
        self.failure = reason
        self._graph = self._static_out = None
        self._static_in = []
        print(f"bench: CUDA graph capture of {self.name} failed ({reason}); running it eagerly",
              file=sys.stderr, flush=True)
