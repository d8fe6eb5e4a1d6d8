"""Table 8 timing: ms per training iteration of CE, MW-Net and CurveNet at SL = 0, 1, 2, 3.

``python -m bench timing [--device cpu|cuda|auto] [--model resnet32|small_cnn|wrn16_8] [--batch-size 128]
[--repeats R] [--warmup W] [--steps ce,mwnet,curvenet_sl0,...] [--precision fp32|bf16] [--no-graph]
[--second-order jvp|autograd] [--memory-format channels_last|contiguous] [--no-cudnn-benchmark]
[--pack N [--pack-mode processes|streams|fused]] [--deterministic] [--seed S] [--json]``

Every step is built from the code training runs, in one process on one device, and called
through :class:`bench.capture.StepGraph` on the loader's batch plans as the methods call it:
eagerly, and on CUDA (unless ``--no-graph``) also captured as a CUDA graph, the two reported side
by side (``ms_per_iter`` and ``graph_ms_per_iter``, each with its ratios to CE and to SL = 0).
On CUDA the model and batches are channels_last and cuDNN times its convolution algorithms per
shape (``torch.backends.cudnn.benchmark``), as in training (bench/capture.py); ``--memory-format
contiguous`` and ``--no-cudnn-benchmark`` measure without. ``--pack N`` measures instead the cost
of packing N runs on one device (bench/packing.py: N processes as ``bench run --jobs N`` runs
them, N copies on N CUDA streams, or N runs fused into one network). The steps:

``ce``            the grid protocol's step (``bench.train.train_classifier``'s inner loop: forward,
                  mean CE, ``zero_grad``, backward, SGD step).
``ce_compiled``   the same with the classifier under ``torch.compile`` (TorchInductor fuses the
                  BatchNorms' element-wise work with the ReLUs and residual sums, forward and
                  backward; the optimiser step and the loader stay as they are), checked against
                  eager first (bench/compiled.py: a disagreement is refused in one line; on the
                  CPU of session 13 it is, at batch 128). Only when named in ``--steps``: it
                  measures what kernel fusion buys (``bench run --compile`` trains this way).
``ce_fixed_batch`` the CE step on one batch assembled once (no gather, crop/flip or normalisation
                  in the step, as a probe on synthetic tensors times it): by difference to ``ce``,
                  what the in-step gather, crop/flip and normalisation cost (drawing the batch plans and
                  copying them in, which both do alike, is not in the difference). Only when named in
                  ``--steps``.
``mwnet``         :class:`methods.meta.MetaStep` with MW-Net(noise)'s weighting net and optimiser
                  (``methods.mwnet.WeightNet``, ``MWNetParams().weight_optimizer``; plain-SGD
                  look-ahead, unnormalised weights), as ``MWNet.fit`` builds it.
``curvenet_slK``  :class:`methods.meta.MetaStep` with ``methods.curvenet.CurveNet`` (P = 64) on
                  synthetic curves of the paper's length (294), Adam 1e-3 / 1e-4, the full
                  look-ahead and ``skip_layers = K``, as ``CurveNetMethod.fit`` builds it for an
                  epoch before the first lr drop (when the meta step runs).

The meta steps compute the weighting net's gradient as training does by default, by the
forward-mode JVP (``--second-order jvp``, methods/meta.py); ``--second-order autograd`` times them
with a second-order backward through the look-ahead instead, the computation the papers' codes
(``higher``, MW-Net's ``meta_model``) and their Table 8 times run. Both give the same gradient.

The classifier optimiser is the protocol's SGD (lr 0.1, momentum 0.9, Nesterov, weight decay
5e-4). Data: random uint8 images (32x32x3 for resnet32 / wrn16_8, 28x28x1 for small_cnn) and
random labels over 10 classes, fed through the real device loader (``bench.data.Loader``, with
the per-sample crop/flip augmentation for the 3-channel models, as for CIFAR), so each iteration
also pays the loader's cost, as in training. Train and meta batches are both ``--batch-size``.

Measurements: every step is built, warmed up (``--warmup`` iterations, and on CUDA captured), then
all are timed in turns, ``--repeats`` rounds of one iteration each (:class:`RoundRobin`): a stall
of the machine then hits every step of its round alike. Per step, the median over rounds of:

``ms_per_iter``  the whole iteration, synchronised before and after (``torch.cuda.synchronize``
                 on CUDA): next train and meta batch, and the step.
``phase_ms``     per phase of the eager iteration (``batch``, then ``methods.meta.PHASES``; CE: ``batch``,
                 ``real_forward``, ``real_backward``), the median ms: where the time goes. On CPU from the
                 timed iterations; on CUDA every mark synchronises, so from separate iterations.
``meta_ms``      the paper's "meta time" (CurveNet code, notes/curvenet_mwnet.md §4): from the
                 end of the meta forward (the look-ahead classifier on the meta batch) to the end
                 of the weighting-net optimiser step, synchronised at both ends, i.e. the meta
                 backward (here: the first-order backward of the meta loss, the forward-mode JVP
                 and the backward through the weighting net; methods/meta.py) + the optimiser
                 step. 0 for CE. On CUDA it is measured on separate iterations (its extra sync
                 would perturb ms_per_iter); on CPU the same iterations give both.

The ratios (``ratio_to_ce``, ``ratio_to_sl0``, ``meta_ratio_to_sl0`` and their ``graph_`` twins)
are medians over rounds of the two steps' times in the same round (:func:`paired_ratio`): on a
shared 2-core machine the MW-Net / CE ratio stayed within 3.30-3.40 over six runs, where timed one
after the other (as pytest-benchmark times its tests) it ranged from 2.57 to 3.71 over six.

The paper's times (239.94 / 222.45 / 65.44 / 41.98 ms for SL = 0..3, ``tables/reference``) are
meta times on the authors' GPU: compare ratios (to SL = 0, to CE), not milliseconds.
"""

from __future__ import annotations

import statistics
import sys
import time

from bench.errors import BenchError
from bench.summary import to_json

STEPS = ("ce", "mwnet", "curvenet_sl0", "curvenet_sl1", "curvenet_sl2", "curvenet_sl3")
# timed only when named in --steps: the CE step with the classifier under torch.compile (fused
# kernels, e.g. BatchNorm + ReLU; a measurement of what fusion buys, not how training runs), and
# on one fixed batch (what the loader costs the CE step)
EXTRA_STEPS = ("ce_compiled", "ce_fixed_batch")
PAPER_META_MS = {"curvenet_sl0": 239.94, "curvenet_sl1": 222.45, "curvenet_sl2": 65.44, "curvenet_sl3": 41.98}
MODEL_INPUT = {"resnet32": (32, 3), "wrn16_8": (32, 3), "small_cnn": (28, 1)}
NUM_CLASSES = 10
SECOND_ORDER_TEXT = {"jvp": "forward-mode JVP", "autograd": "second-order backward"}
CIFAR_MEAN = tuple(v / 255 for v in (125.3, 123.0, 113.9))
CIFAR_STD = tuple(v / 255 for v in (63.0, 62.1, 66.7))


def add_arguments(parser) -> None:
    from bench.packing import PACK_MODES

    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--model", default="resnet32", choices=sorted(MODEL_INPUT),
                        help="backbone (default resnet32, 32x32x3; small_cnn uses 28x28x1)")
    parser.add_argument("--batch-size", type=int, default=128, help="train and meta batch size (default 128)")
    parser.add_argument("--repeats", type=int, help="timed iterations per step, median reported "
                                                    "(default 3 on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, help="untimed iterations first (default 1 on CPU, 5 on CUDA)")
    parser.add_argument("--steps", default=",".join(STEPS),
                        help=f"which steps (default all: {','.join(STEPS)}; also ce_compiled, the CE step with "
                             "the classifier under torch.compile, checked against eager first, and "
                             "ce_fixed_batch, the CE step on one batch assembled once: the loader's cost)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object keyed by step")
    parser.add_argument("--no-graph", dest="graph", action="store_false",
                        help="on CUDA, skip the captured (CUDA graph) column")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="forward passes in fp32 (default) or under bf16 autocast")
    parser.add_argument("--second-order", choices=("jvp", "autograd"), default="jvp",
                        help="meta steps' weighting-net gradient: forward-mode JVP (default, as training "
                             "runs it) or a second-order backward (as the papers' codes, Table 8)")
    parser.add_argument("--memory-format", choices=("channels_last", "contiguous"),
                        help="layout of models and batches on CUDA (default channels_last, as training runs; "
                             "always contiguous on CPU)")
    parser.add_argument("--no-cudnn-benchmark", dest="cudnn_benchmark", action="store_false",
                        help="on CUDA, cuDNN's default algorithm choice instead of timing its algorithms per "
                             "shape (torch.backends.cudnn.benchmark, which training sets)")
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic kernels only, without cuDNN's search, as bench run --deterministic "
                             "trains (its cost; not with --pack)")
    parser.add_argument("--pack", type=int, metavar="N",
                        help="instead: ms per iteration alone and with N processes at once on the device "
                             "(--jobs N packing; the ratio is the epoch-time cost of packing)")
    parser.add_argument("--pack-mode", choices=PACK_MODES, default=None,
                        help="with --pack: N processes (as bench run --jobs N does; default), N copies "
                             "of the step in this process advanced in lockstep, each replayed on its own "
                             "CUDA stream (streams), or N runs fused into one network with grouped "
                             "convolutions (fused; bench/fused.py, as bench run --fuse N trains seeds). "
                             "streams is a measurement: bench run does not pack that way yet")


# ------------------------------------------------------------------------------ building steps

class Timer:
    """Wall-clock ms with device synchronisation (CUDA) at both ends of every interval."""

    def __init__(self, device):
        import torch

        self.sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def now(self) -> float:
        self.sync()
        return time.perf_counter()


class PhaseClock:
    """Where an eager iteration's time goes, without changing the step: ms from the iteration's
    start (:meth:`start`) or the previous phase's end to each phase's end. The meta steps report
    their phases through :attr:`methods.meta.MetaStep.on_phase` (``methods.meta.PHASES``), the CE
    step its forward and backward as ``real_forward`` and ``real_backward``; both report the
    batch assembly as ``batch``. The paper's meta time is the sum of ``META_TIME_PHASES``."""

    def __init__(self, timer: Timer):
        self.timer = timer
        self.enabled = False
        self.last = None
        self.iterations: list[dict[str, float]] = []

    def start(self) -> None:
        if self.enabled:
            self.iterations.append({})
            self.last = self.timer.now()

    def __call__(self, phase: str) -> None:
        if self.enabled and self.last is not None:
            now = self.timer.now()
            self.iterations[-1][phase] = self.iterations[-1].get(phase, 0.0) + 1000.0 * (now - self.last)
            self.last = now

    def meta_ms(self) -> list[float]:
        from methods.meta import META_TIME_PHASES

        return [sum(it.get(p, 0.0) for p in META_TIME_PHASES) for it in self.iterations]

    def phase_ms(self) -> dict[str, float]:
        """The median over iterations of each phase's ms."""
        phases = dict.fromkeys(p for it in self.iterations for p in it)
        return {p: statistics.median(it.get(p, 0.0) for it in self.iterations) for p in phases}


def uses_channels_last(device, requested: bool | None = None) -> bool:
    """channels_last models and batches: on CUDA only, as training (``methods.base.Run``); there
    ``requested`` (``--memory-format``) chooses, None meaning yes."""
    return device.type == "cuda" and (requested is None or bool(requested))


def _warm_up(step, warmup: int) -> None:
    """``warmup`` untimed iterations, then (captured steps) the eager warm-up calls and the capture."""
    for _ in range(warmup + _capture_calls(step)):
        step()


def _loaders(model_name: str, batch: int, device, generator, channels_last: bool):
    import numpy as np

    from bench.data import Loader

    size, channels = MODEL_INPUT[model_name]
    rng = np.random.default_rng(0)
    mean, std = (CIFAR_MEAN, CIFAR_STD) if channels == 3 else ((0.286,), (0.353,))
    out = []
    for _ in range(2):  # train, meta
        x = rng.integers(0, 256, size=(4 * batch, size, size, channels), dtype=np.uint8)
        y = rng.integers(0, NUM_CLASSES, size=4 * batch)
        out.append(Loader(x, y, batch_size=batch, device=device, mean=mean, std=std, augment=channels == 3,
                          shuffle=True, drop_last=True, generator=generator,
                          channels_last=channels_last).cycle())
    return out


def build_step(name: str, *, model_name: str = "small_cnn", batch: int = 128, device="cpu", seed: int = 0,
               graph: bool = False, precision: str = "fp32", second_order: str = "jvp",
               channels_last: bool | None = None, runs: int = 1, layout: str | None = None):
    """``(step, clock)``: ``step()`` runs one training iteration of ``name`` (next batch plans
    included), through :class:`bench.capture.StepGraph` as training does (captured on CUDA when
    ``graph``); ``clock`` is its :class:`PhaseClock` (None for captured steps, whose Python hooks
    do not run on replay). ``channels_last`` (model and batches): default on CUDA only, as training.

    ``runs`` > 1: ``runs`` runs (seeds ``seed``, ``seed + 1``, ...; each its own batches and
    weighting net) horizontally fused into one network (bench/fused.py), stepping together; one
    iteration is then one step of every run. ``layout`` of the fused classifier: ``runs`` (the
    default with channels_last, i.e. on CUDA) or ``rows`` (the default in the contiguous format)."""
    import torch
    import torch.nn.functional as F

    from bench.capture import StepGraph, autocast
    from bench.fused import fuse, interleave
    from bench.models import build_model
    from bench.spec import PRESETS
    from methods.meta import MetaStep

    if name not in STEPS + EXTRA_STEPS:
        raise ValueError(f"unknown step {name!r}; choose from {', '.join(STEPS + EXTRA_STEPS)}")
    device = torch.device(device)
    size, channels = MODEL_INPUT[model_name]
    channels_last = uses_channels_last(device, channels_last)
    layout = layout or ("runs" if channels_last else "rows")
    if runs > 1 and channels_last and layout == "rows":
        raise ValueError("the rows layout of fused runs is contiguous only (bench/fused.py)")
    models, loaders = [], []
    for k in range(runs):
        torch.manual_seed(seed + k)
        model = build_model(model_name, NUM_CLASSES, channels, "kaiming").to(device).train()
        models.append(model.to(memory_format=torch.channels_last) if channels_last else model)
        loaders.append(_loaders(model_name, batch, device, torch.Generator().manual_seed(seed + k), channels_last))
    model = models[0] if runs == 1 else fuse(models, layout)
    p = PRESETS["paper"]
    optimizer = torch.optim.SGD(model.parameters(), lr=p["lr"], momentum=p["momentum"], nesterov=p["nesterov"],
                                weight_decay=p["weight_decay"])
    train = _RunsLoader([pair[0] for pair in loaders], layout)
    meta = _RunsLoader([pair[1] for pair in loaders], layout)
    captured = graph and device.type == "cuda"
    clock = None if captured else PhaseClock(Timer(device))
    mark = clock or (lambda phase: None)

    if name in ("ce", "ce_compiled", "ce_fixed_batch"):
        forward = model
        fixed = train.assemble(*train.next_plans()) if name == "ce_fixed_batch" else None
        if name == "ce_compiled":  # checked against eager first (a CompileMismatch is a BenchError)
            from bench.compiled import compile_checked
            one = torch.empty(batch, channels, size, size, device=device)  # one run's batch, as the loader's
            one = one.contiguous(memory_format=torch.channels_last) if channels_last else one
            forward = compile_checked(model, train.images([one] * runs), precision=precision)

        def ce_step(*plans):
            x, y, _ = fixed or train.assemble(*plans)
            mark("batch")
            with autocast(device, precision):  # methods/ce.py's loss in train_classifier's step;
                loss = F.cross_entropy(forward(x), y) * runs  # fused: the sum of the runs' mean CEs
            mark("real_forward")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            mark("real_backward")
            return loss.detach()
        graphed = StepGraph(ce_step, name=name, device=device, enabled=graph, optimizers=[optimizer])
        step = _iteration(graphed, clock, train.next_plans)
        step.model = model
        return step, clock

    if name == "mwnet":
        from methods.mwnet import MWNetParams, WeightNet

        mp = MWNetParams()  # variant noise: Adam 1e-3 / 1e-4, unnormalised, plain-SGD look-ahead
        weight_net = _fused_or_one([_seeded(seed + k, lambda: WeightNet(mp.hidden).to(device)) for k in range(runs)])
        weight_opt = mp.weight_optimizer(weight_net.parameters())
        meta_step = MetaStep(model, optimizer, weight_net, weight_opt, lookahead=mp.lookahead,
                             skip_layers=mp.skip_layers, normalize=mp.normalize, second_order=second_order,
                             precision=precision)
    else:
        from methods.curvenet import CurveNet, CurveNetParams

        cp = CurveNetParams()
        skip = int(name[-1])
        curves = interleave([torch.randn(4 * batch, cp.input_dim, generator=torch.Generator().manual_seed(seed + k))
                             for k in range(runs)]).to(device)  # row i * runs + k: run k's sample i
        weight_net = _fused_or_one([_seeded(seed + k, lambda: CurveNet(cp.input_dim, NUM_CLASSES, cp.embed_dim))
                                    .to(device) for k in range(runs)])
        weight_opt = torch.optim.Adam(weight_net.parameters(), lr=cp.meta_lr, weight_decay=cp.meta_weight_decay)
        meta_step = MetaStep(model, optimizer, weight_net, weight_opt, lambda loss, y, idx: weight_net(curves[idx], y),
                             lookahead=cp.lookahead, skip_layers=skip, normalize=False, second_order=second_order,
                             precision=precision)
    meta_step.on_phase = clock
    graphed = StepGraph(meta_step.on_plans(train, meta), name=name, device=device, enabled=graph,
                        optimizers=[optimizer, weight_opt])
    step = _iteration(graphed, clock, lambda: (*train.next_plans(), *meta.next_plans()))
    step.meta_step, step.model = meta_step, model
    return step, clock


class _RunsLoader:
    """The batch cycles of the runs of a step, as one loader: ``next_plans()`` the runs' next batch
    plans (three tensors per run), ``assemble(*plans)`` their batches; for fused runs the images
    in the classifier's ``layout`` and labels and pool indices as rows (bench/fused.py)."""

    def __init__(self, cycles: list, layout: str):
        self.cycles, self.layout = cycles, layout

    def next_plans(self) -> list:
        return [t for c in self.cycles for t in c.next_plan()]

    def images(self, images: list):
        """The runs' image batches as the classifier takes them: one run's as it is, fused runs'
        as rows or in the runs layout."""
        from bench.fused import runs_images

        return images[0] if len(images) == 1 else runs_images(images, self.layout)

    def assemble(self, *plans):
        from bench.fused import runs_batch

        if len(self.cycles) == 1:
            return self.cycles[0].loader.assemble(*plans)
        return runs_batch([c.loader.assemble(*plans[3 * k:3 * k + 3]) for k, c in enumerate(self.cycles)],
                          self.layout)


def _fused_or_one(nets):
    from bench.fused import fuse

    return nets[0] if len(nets) == 1 else fuse(nets)


def _seeded(seed: int, make):
    """``make()`` under ``torch.manual_seed(seed)``: run k's weighting net, whether alone or fused."""
    import torch

    torch.manual_seed(seed)
    return make()


def _iteration(graphed, clock, next_plans):
    """``step()``: one timed iteration, the next batch plans and the (captured or eager) step."""
    def step():
        if clock:
            clock.start()
        graphed(*next_plans())
    step.graphed = graphed
    return step


def _capture_calls(step) -> int:
    """Calls before a step replays: its StepGraph's eager warm-up calls and the capture (0 if eager)."""
    return step.graphed.warmup + 1 if step.graphed.enabled else 0


class RoundRobin:
    """Several steps timed in turns: each :meth:`round` calls every step once, in order, and
    records its ms. A stall of the machine (another process, a page-fault storm) then lands on
    every step of the round alike, and the per-round ratios (:meth:`ratio`) stay put where the
    ratio of two steps timed one after the other moved by up to 1.1 (on this 2-core VM the CE step
    alone ran at 29-30 ms with stretches at 41-49 ms)."""

    def __init__(self, steps: dict, timer: Timer):
        self.steps = steps
        self.timer = timer
        self.ms: dict = {key: [] for key in steps}

    def round(self) -> None:
        for key, step in self.steps.items():
            t0 = self.timer.now()
            step()
            self.ms[key].append(1000.0 * (self.timer.now() - t0))

    def median(self, key) -> float:
        return statistics.median(self.ms[key])

    def ratio(self, key, base) -> float | None:
        """The median over rounds of ``key``'s ms over ``base``'s in the same round."""
        return paired_ratio(self.ms[key], self.ms[base])


def paired_ratio(values: list[float], bases: list[float]) -> float | None:
    """The median of ``values[i] / bases[i]`` (two steps measured in the same rounds), else None."""
    if len(values) != len(bases):
        return None
    pairs = [a / b for a, b in zip(values, bases) if b]
    return statistics.median(pairs) if pairs else None


def measure_steps(names, *, model_name: str, batch: int, device, repeats: int, warmup: int, seed: int = 0,
                  graph: bool = False, precision: str = "fp32", second_order: str = "jvp",
                  channels_last: bool | None = None) -> dict:
    """Per step in ``names``: the median ms per iteration and the median meta ms (module
    docstring), the steps built side by side and timed in turns (:class:`RoundRobin`), each
    after its own warm-up (and capture)."""
    import torch

    device = torch.device(device)
    built = {}
    for name in names:
        try:
            built[name] = build_step(name, model_name=model_name, batch=batch, device=device, seed=seed,
                                     graph=graph, precision=precision, second_order=second_order,
                                     channels_last=channels_last)
        except BenchError as exc:  # ce_compiled refused by its check, or not compiled: the others still run
            if name == names[-1] and not built:
                raise
            print(f"bench: timing: {name} left out: {exc}", file=sys.stderr)
    timer = Timer(device)
    for step, _ in built.values():
        _warm_up(step, warmup)
    separate = device.type == "cuda"
    clocks = {name: clock for name, (_, clock) in built.items() if clock is not None}
    for clock in clocks.values():
        clock.enabled = not separate
    turns = RoundRobin({name: step for name, (step, _) in built.items()}, timer)
    for _ in range(repeats):
        turns.round()
    if separate and clocks:  # the phase marks synchronise: their own rounds, apart from the timed ones
        for clock in clocks.values():
            clock.enabled = True
        phase_turns = RoundRobin({name: built[name][0] for name in clocks}, timer)
        for _ in range(repeats):
            phase_turns.round()
    out = {}
    for name, (step, clock) in built.items():
        if clock is not None and (len(clock.iterations) != repeats
                                  or any("real_backward" not in it for it in clock.iterations)):
            raise RuntimeError(f"{name}: the phase hooks did not mark {repeats} whole iterations "
                               "(methods/meta.py changed? see bench.timing.PhaseClock)")
        r = {"ms_per_iter": turns.median(name), "ms_per_iter_all": [round(v, 3) for v in turns.ms[name]],
             "mode": step.graphed.mode}
        if clock is not None:
            meta = clock.meta_ms()
            r.update(meta_ms=statistics.median(meta), meta_ms_all=[round(v, 3) for v in meta],
                     phase_ms={p: round(v, 3) for p, v in clock.phase_ms().items()})
        out[name] = r
    return out


def measure(name: str, **kwargs) -> dict:
    """:func:`measure_steps` for one step."""
    return measure_steps([name], **kwargs)[name]


def run_all(steps, *, model_name: str = "resnet32", batch: int = 128, device="cpu", repeats: int = 3,
            warmup: int = 1, seed: int = 0, progress=None, graph: bool | None = None,
            precision: str = "fp32", second_order: str = "jvp", channels_last: bool | None = None) -> dict:
    """Measure every step in ``steps`` in turns (:func:`measure_steps`), eager and (on CUDA unless
    ``graph=False``) captured, and add the ratios (to CE, to CurveNet SL = 0) within each mode:
    each the median over rounds of the two steps' times in the same round."""
    import torch

    from bench.capture import deterministic_kernels, searches_conv_algorithms

    device = torch.device(device)
    graph = device.type == "cuda" if graph is None else graph and device.type == "cuda"
    channels_last = uses_channels_last(device, channels_last)
    kwargs = dict(model_name=model_name, batch=batch, device=device, repeats=repeats, warmup=warmup, seed=seed,
                  precision=precision, second_order=second_order, channels_last=channels_last)
    if progress:
        progress(", ".join(steps) + " in turns" + (", eager" if graph else ""))
    out = measure_steps(steps, **kwargs)
    if graph:
        if progress:
            progress(", ".join(steps) + " in turns, captured")
        for name, c in measure_steps([s for s in steps if s in out], graph=True, **kwargs).items():
            out[name].update(graph_ms_per_iter=c["ms_per_iter"] if c["mode"] == "captured" else None,
                             graph_ms_per_iter_all=c["ms_per_iter_all"], graph_mode=c["mode"])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    for key, r in out.items():
        for prefix in ("", "graph_"):
            for base, ratio in (("ce", "ratio_to_ce"), ("curvenet_sl0", "ratio_to_sl0")):
                if base == "ce" or (key.startswith("curvenet") and base in out):
                    b = out.get(base, {})
                    both = r.get(f"{prefix}ms_per_iter") is not None and b.get(f"{prefix}ms_per_iter") is not None
                    r[prefix + ratio] = (paired_ratio(r[f"{prefix}ms_per_iter_all"], b[f"{prefix}ms_per_iter_all"])
                                         if both else None)
        if key.startswith("curvenet") and "curvenet_sl0" in out:
            r["meta_ratio_to_sl0"] = paired_ratio(r["meta_ms_all"], out["curvenet_sl0"]["meta_ms_all"])
        if key in PAPER_META_MS:
            r["paper_meta_ms"] = PAPER_META_MS[key]
            r["paper_meta_ratio_to_sl0"] = PAPER_META_MS[key] / PAPER_META_MS["curvenet_sl0"]
        r.update(device=str(device), device_name=name, model=model_name, batch_size=batch, repeats=repeats,
                 warmup=warmup, torch=torch.__version__, threads=torch.get_num_threads(), precision=precision,
                 second_order=second_order, channels_last=channels_last,
                 cudnn_benchmark=searches_conv_algorithms(device), deterministic=deterministic_kernels(),
                 data="random uint8 images through bench.data.Loader"
                 + (" (crop/flip)" if MODEL_INPUT[model_name][1] == 3 else ""))
    return out


def render(results: dict) -> str:
    """The Table 8 layout: our ms per iteration (eager, and captured where measured) and meta ms,
    with ratios, next to the paper's."""
    from tabulate import tabulate

    def f(v, digits=2):
        return "—" if v is None else f"{v:.{digits}f}"

    labels = {"ce": "CE", "ce_compiled": "CE, torch.compile", "ce_fixed_batch": "CE, one fixed batch",
              "mwnet": "MW-Net(noise)",
              **{f"curvenet_sl{k}": f"CurveNet SL={k}" for k in range(4)}}
    captured = any("graph_mode" in r for r in results.values())
    rows = []
    for key, r in results.items():
        row = [labels[key], f(r["ms_per_iter"], 1), f(r.get("ratio_to_ce")), f(r.get("ratio_to_sl0"))]
        if captured:
            row += [f(r.get("graph_ms_per_iter"), 2) if r.get("graph_mode") == "captured" else r.get("graph_mode", "—"),
                    f(r.get("graph_ratio_to_ce")), f(r.get("graph_ratio_to_sl0"))]
        row += [f(r.get("meta_ms"), 1) if not key.startswith("ce") else "—", f(r.get("meta_ratio_to_sl0")),
                f(r.get("paper_meta_ms")), f(r.get("paper_meta_ratio_to_sl0"))]
        rows.append(row)
    r0 = next(iter(results.values()))
    head = (f"Table 8 timing: {r0['model']}, batch {r0['batch_size']}, {r0['device']} ({r0['device_name']}, "
            f"torch {r0['torch']}, {r0['threads']} threads), {r0['precision']}, meta gradient by "
            f"{SECOND_ORDER_TEXT[r0.get('second_order', 'jvp')]}"
            f"{', channels_last' if r0.get('channels_last') else ''}"
            f"{', cudnn.benchmark' if r0.get('cudnn_benchmark') else ''}"
            f"{', deterministic kernels' if r0.get('deterministic') else ''}, "
            f"median of {r0['repeats']} round{'s' * (r0['repeats'] != 1)} (the steps in turns) after "
            f"{r0['warmup']} warm-up; data: {r0['data']}")
    headers = ["step", "eager ms/iter", "× CE", "× SL=0"]
    if captured:
        headers += ["captured ms/iter", "× CE", "× SL=0"]
    headers += ["meta ms", "meta × SL=0", "paper meta ms", "paper × SL=0"]
    table = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    note = ("ms/iter = whole iteration (batch plans + step); × CE, × SL=0 = the median over rounds of the two "
            "steps' times in the same round (each round runs every step once, so a stall of the machine hits all "
            "of them alike); captured = the same step replayed as a CUDA graph "
            "(bench/capture.py); meta ms = the eager step's meta backward, JVP and weighting-net update "
            "(meta bwd + JVP + V update below: the paper's 'meta time'). Paper: meta time of ResNet-32 on the "
            "authors' GPU (not named in our sources); compare ratios, not milliseconds.")
    if not captured:
        note += " Captured steps: CUDA only (not measured on this device)."
    else:
        note += (" Eager runs torch's default (foreach) SGD, as `bench run --no-graph` does; captured runs fused "
                 "SGD with the lr as a device tensor, so part of the gap is that kernel. fp32 means torch's "
                 "defaults: cuDNN convolutions in TF32 (torch.backends.cudnn.allow_tf32), matmuls in fp32.")
    return f"{head}\n\n{table}\n\n{note}\n\n{render_phases(results, labels)}"


PHASE_LABELS = {"batch": "batch", "lookahead_forward": "look-ahead fwd", "lookahead_backward": "look-ahead bwd",
                "meta_forward": "meta fwd", "meta_backward": "meta bwd", "jvp": "JVP", "weight_update": "V update",
                "real_forward": "real fwd", "real_backward": "real bwd+step"}


def render_phases(results: dict, labels: dict) -> str:
    """Where the eager iteration's time goes (``phase_ms``), phase by phase, in ms, and what the
    forward and backward passes alone cost in CE iterations: a floor under the meta / CE ratio
    that no overhead reduction can go below."""
    from tabulate import tabulate

    ce = sum(results.get("ce", {}).get("phase_ms", {}).values())
    rows = []
    for key, r in results.items():
        phases = r.get("phase_ms")
        if not phases:
            continue
        rows.append([labels[key]] + [f"{phases[p]:.1f}" if p in phases else "—" for p in PHASE_LABELS]
                    + [f"{sum(phases.values()):.1f}"])
    table = tabulate(rows, headers=["step", *PHASE_LABELS.values(), "sum"], tablefmt="github", disable_numparse=True)
    note = ("Phases of the eager iteration (median ms; methods.meta.PHASES, marked by MetaStep.on_phase; on CUDA "
            "each mark synchronises, on iterations apart from the timed ones). batch = drawing and assembling the "
            "train and meta batches; CE's forward and backward+step are in the real columns. Meta time = meta bwd "
            "+ JVP + V update.")
    passes = ("lookahead_forward", "lookahead_backward", "meta_forward", "meta_backward", "real_forward",
              "real_backward")
    floors = [f"{labels[k]} {sum(r['phase_ms'].get(p, 0.0) for p in passes) / ce:.2f}"
              for k, r in results.items() if ce and not k.startswith("ce") and r.get("phase_ms")]
    if floors:  # (none with --steps ce alone)
        note += (" The forward and backward passes alone (look-ahead, meta, real: all but batch, JVP and V update) "
                 "cost, in CE iterations: " + ", ".join(floors) + ".")
    return f"{table}\n\n{note}"


# ------------------------------------------------------------------------------ packing


def main(args) -> int:  # bench.cli.main has already called bench.cpu.keep_freed_memory
    from bench.capture import run_kernels
    from bench.cpu import warn_if_slow_bf16
    from bench.errors import BenchError
    from bench.execute import resolve_device
    from bench.spec import comma_items

    device = resolve_device(args.device)
    warn_if_slow_bf16(device, args.precision)
    steps = list(dict.fromkeys(comma_items(args.steps, "--steps")))  # each step once
    bad = [s for s in steps if s not in STEPS + EXTRA_STEPS]
    if bad:  # (an empty list or item is comma_items' error)
        raise BenchError(f"unknown step {bad[0]!r}; choose from {', '.join(STEPS + EXTRA_STEPS)}")
    if args.batch_size < 1:
        raise BenchError(f"--batch-size must be at least 1, got {args.batch_size}")
    cuda = device.type == "cuda"
    repeats = args.repeats if args.repeats is not None else (20 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    if repeats < 1 or warmup < 0:
        raise BenchError("--repeats must be >= 1 and --warmup >= 0")
    progress = None if args.json else (lambda name: print(f"timing {name} ...", file=sys.stderr, flush=True))
    channels_last = uses_channels_last(device, None if args.memory_format is None
                                       else args.memory_format == "channels_last")
    if args.pack_mode is not None and args.pack is None:
        raise BenchError(f"--pack-mode {args.pack_mode} is for --pack N (N runs at once); give --pack, or drop it")
    if args.pack is not None and args.pack_mode is None:
        args.pack_mode = "processes"  # the default --pack-mode (its help), as the table's footnote says it
    if args.deterministic and args.pack is not None:
        raise BenchError("--deterministic times the steps in this process; it does not apply to --pack")
    with run_kernels(device, deterministic=args.deterministic, search=args.cudnn_benchmark):  # as training
        return _measure(args, steps, device, repeats, warmup, progress, channels_last)


def _measure(args, steps, device, repeats, warmup, progress, channels_last) -> int:
    """``main`` once the kernels are chosen: the packing or the step table."""
    from bench.errors import BenchError

    if args.pack is not None:
        if args.pack < 2:
            raise BenchError(f"--pack needs at least 2 runs, got {args.pack}")
        from bench import packing

        rows = {}
        for name in steps:
            if progress:
                progress(f"{name}, alone and {args.pack} packed")
            rows[name] = packing.measure(
                args.pack_mode, name, args.pack, model_name=args.model, batch=args.batch_size,
                device=device,
                iters=max(repeats, 10), warmup=warmup, graph=args.graph, precision=args.precision, seed=args.seed,
                second_order=args.second_order, channels_last=channels_last)
        print(to_json(rows) if args.json else packing.render(rows, args, device, channels_last))
        return 0
    results = run_all(steps, model_name=args.model, batch=args.batch_size, device=device, repeats=repeats,
                      warmup=warmup, seed=args.seed, progress=progress, graph=args.graph, precision=args.precision,
                      second_order=args.second_order, channels_last=channels_last)
    print(to_json(results) if args.json else render(results))
    return 0
