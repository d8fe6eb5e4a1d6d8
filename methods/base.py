"""The method interface: :class:`Method` (what a method file defines) and :class:`Run` (what the
harness hands it).

A method file holds a dataclass of its hyperparameters with the paper's defaults, its loss or
selection rule, and ``fit(run) -> model``; the harness evaluates the returned model. Methods
never read the store: they report through ``run.log`` (per-epoch history) and ``run.record``
(per-sample values such as final weights, flags, scores or curves).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import sys
import time
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn

from bench.capture import StepGraph, autocast
from bench.errors import BenchError
from bench.models import build_model
from bench.spec import RunSpec, parse_value
from bench.train import accuracy_report, check_finite, check_finite_model, lr_at, predict


def check_int(value, what: str, minimum: int = 0) -> None:
    """BenchError unless ``value`` is an integer (not a bool) >= ``minimum``, for Params checks."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BenchError(f"{what} must be an integer >= {minimum}, got {value!r}")


def check_number(value, what: str) -> None:
    """BenchError unless ``value`` is a finite number (not a bool) >= 0, for Params checks."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise BenchError(f"{what} must be a number >= 0, got {value!r}")


@dataclass
class NoParams:
    """Hyperparameters of a method that has none."""


class Method:
    """Base class of every method. Subclasses set ``name`` and ``Params`` and implement ``fit``.

    ``presets`` maps a preset name to hyperparameter values that replace the paper defaults under
    that preset (for example a probe schedule scaled down for ``quick``); ``--set`` wins over both.
    """

    name: ClassVar[str]
    Params: ClassVar[type] = NoParams
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    # True for methods that learn from the clean meta set (MW-Net, CurveNet): `--train-on-meta`
    # (PROTOCOL.md §7) then leaves their data alone and adds the meta set to the others' pools
    uses_meta_set: ClassVar[bool] = False
    # True for methods that train through the Run's services only (model, net, loader, sgd, epochs,
    # log, record, alone; per-run losses through train_classifier or methods.meta.MetaStep) and read
    # run.data only through run.member_runs, run.per_run or run.pooled: `bench run --fuse K` may
    # then train K seeds of one cell as one fused network (bench/fused_runs.py)
    fusable: ClassVar[bool] = False
    # what keeps some of a fusable method's runs from fusing (see `fuses`), for `bench list` and notes
    fuse_exceptions: ClassVar[str] = ""
    # the settings that give the length of the method's own stages (CurveNet's probe), which
    # --epochs does not scale: `bench run --epochs N` says they keep their length
    own_stages: ClassVar[tuple[str, ...]] = ()
    # the setting that holds the noise rate the method assumes ("nominal", "realised" or a number,
    # methods.curves.resolve_rate): on real noise whose wrong labels the file does not name, both
    # words give 0, and `bench run` says so
    rate_setting: ClassVar[str | None] = None

    def __init__(self, params=None):
        self.params = params if params is not None else self.Params()

    def fit(self, run: Run) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def display_name(cls, params: dict) -> str:
        """Name shown in tables (e.g. MW-Net(noise)); ``params`` is the spec's parameter dict."""
        return cls.name

    @classmethod
    def fuses(cls, spec: RunSpec) -> bool:
        """Whether ``bench run --fuse K`` may train this run fused with its other seeds': a
        ``fusable`` method's runs, unless the method excludes some settings."""
        return cls.fusable

    @classmethod
    def fused_sizes(cls, params, data) -> tuple:
        """The sizes a run shares with the other runs of its fused group, beyond its training pool
        and meta set: a set the method draws from the run's data for fused batches (CurveNet's
        pseudo-meta set). A group whose runs' sizes differ trains one run at a time."""
        return ()

    @classmethod
    def inert_settings(cls, params) -> dict[str, str]:
        """The settings that do nothing under ``params`` (a Params instance), each with the setting
        that makes it so (Class-Balanced's ``gamma`` "with cb.loss=softmax"). ``bench run`` keeps
        such a setting at its preset's value, so that the run is the one asked for without it (one
        key, one row), and says so. Most methods use every setting."""
        return {}

    @classmethod
    def check_spec(cls, spec: RunSpec) -> None:
        """BenchError for a run this method cannot train (e.g. no meta set), raised by the CLI
        before anything is written to the store. Most methods train on any spec."""

    @classmethod
    def resolve_params(cls, preset: str, overrides: dict[str, str] | None = None):
        """The Params instance for ``preset`` with ``--set`` overrides (strings) applied; each
        string is read as its field's annotated type (``float`` reads ``0.5`` even where the
        default is written ``1``)."""
        known = {f.name: f for f in dataclasses.fields(cls.Params)}
        preset_values = cls.presets.get(preset, {})
        unknown = sorted(set(preset_values) - set(known))
        if unknown:  # a method file's own mistake, named as such
            raise BenchError(f"method {cls.name!r}: preset {preset!r} sets unknown settings {', '.join(unknown)}")
        try:
            params = cls.Params(**preset_values)
        except (TypeError, ValueError) as exc:
            raise BenchError(f"method {cls.name!r}: preset {preset!r}: {exc}") from None
        try:
            hints = typing.get_type_hints(cls.Params)
        except (NameError, TypeError):  # an annotation that does not resolve: read by the value's type
            hints = {}
        changes = {}
        for key, text in (overrides or {}).items():
            if key not in known:
                choices = ", ".join(known) or "none"
                raise BenchError(f"method {cls.name!r} has no setting {key!r}; its settings: {choices}")
            current = getattr(params, key)
            if hints.get(key) is float and isinstance(current, int) and not isinstance(current, bool):
                current = float(current)
            try:
                changes[key] = parse_value(text, current)
            except BenchError as exc:
                raise BenchError(f"{cls.name}.{key}: {exc}") from None
            if type(changes[key]) is int and _float_not_int(hints.get(key)):
                changes[key] = float(changes[key])  # a float | None setting given "1": 1.0, one key with "1.0"
        try:
            return dataclasses.replace(params, **changes)
        except (TypeError, ValueError) as exc:
            raise BenchError(f"bad setting for {cls.name}: {exc}") from None

    @classmethod
    def settings(cls, preset: str = "paper") -> dict[str, Any]:
        """The method's ``--set`` settings and their values under ``preset`` (``bench list``)."""
        return dataclasses.asdict(cls.resolve_params(preset))

    @classmethod
    def params_from_spec(cls, spec: RunSpec):
        fields_ = {f.name for f in dataclasses.fields(cls.Params)}
        return cls.Params(**{k: (tuple(v) if isinstance(v, list) else v)
                             for k, v in spec.params if k in fields_})


def _float_not_int(hint) -> bool:
    """Whether a setting's type hint takes a float but not an int (``float``, ``float | None``)."""
    kinds = typing.get_args(hint) or (hint,)
    return float in kinds and int not in kinds


def params_items(params) -> tuple[tuple[str, Any], ...]:
    """A Params instance as the sorted (name, value) pairs a RunSpec stores (and hashes into the
    run's key). Fields that the Params class lists in ``OMITTED_WHEN_DEFAULT`` (a ``ClassVar``:
    settings added after runs were stored) are left out at their default, so that those runs'
    keys still hold; :meth:`Method.params_from_spec` fills them back in."""
    omitted = getattr(type(params), "OMITTED_WHEN_DEFAULT", ())
    defaults = {f.name: f.default for f in dataclasses.fields(params)}
    return tuple(sorted((k, v) for k, v in dataclasses.asdict(params).items()
                        if not (k in omitted and v == defaults[k])))


@dataclass
class Run:
    """What the harness hands a method: the biased data, the spec, the device and a few services."""

    spec: RunSpec
    data: Any                      # bench.data.BiasedData
    device: torch.device
    params: Any = None             # the method's Params instance
    cache_dir: Path | None = None  # where methods may cache reusable artefacts (probe curves)
    progress: Any = None           # callable(row) for a progress display
    checkpoint_path: Path | None = None  # where run.epochs keeps its resumable state (None: off)
    checkpoint_every_s: float = 60.0     # write at most this often (0: after every epoch)
    graph: bool = True             # capture training steps as CUDA graphs on CUDA (bench/capture.py)
    checkpoint_key: str | None = None  # whose checkpoint this is (default the spec's key; a fused group's)
    compile_steps: bool = False    # bench run --compile: CE-style steps' forward compiled (bench/compiled.py)
    history: list[dict] = field(default_factory=list)
    records: dict[str, np.ndarray] = field(default_factory=dict)
    generator: torch.Generator = field(init=False)

    def __post_init__(self):
        self.generator = torch.Generator().manual_seed(self.spec.seed)
        self._test_loader = None
        self._checkpoint = _load_checkpoint(self.checkpoint_path, self.checkpoint_key or self.spec.key())
        self._stages: dict[str, dict] = dict(self._checkpoint.get("stages", {})) if self._checkpoint else {}
        self._last_save = self._attempt_start = time.monotonic()
        # seconds the earlier, killed attempts had run when they wrote the checkpoint resumed from
        self._earlier_s = float(self._checkpoint.get("trained_s", 0.0)) if self._checkpoint else 0.0
        self._saving = self.checkpoint_path is not None  # off after a failed write (see _save)
        self.resumed_from: tuple[str, int] | None = None
        self._entered: set[str] = set()
        self.steps: list[StepGraph] = []
        self._compile_status: list[str] = []  # one per loop that asked (bench run --compile)

    # --- resumable epochs ---------------------------------------------------------------
    def epochs(self, count: int, *, stage: str = "train", state: dict[str, Any] | None = None) -> Iterator[int]:
        """Epochs ``0 .. count-1`` of ``stage``, resumable from a checkpoint.

        ``state`` names everything the loop mutates: modules, optimisers, stateful iterators
        (anything with ``state_dict``/``load_state_dict``) and tensors (restored in place). After
        each epoch the state, the RNGs (torch's global one and ``run.generator``) and the history
        are checkpointed (atomically: temp file + rename). When the run is started again after a
        kill, a finished stage restores its final state and yields nothing; the interrupted stage
        restores its last epoch's state and continues with the next epoch, so the run ends as an
        uninterrupted one would (bit for bit on CPU).
        """
        state = state or {}
        if stage in self._entered:
            raise ValueError(f"run.epochs: stage {stage!r} entered twice; give each loop its own stage name")
        self._entered.add(stage)
        saved = self._stages.get(stage)
        start = 0
        if saved is not None:
            _restore(state, saved["state"])
            start = saved["epoch"] + 1
            if stage == self._checkpoint.get("current"):  # where the killed run stopped
                _set_rng(self._checkpoint["rng"], self.generator, self.device)
                self.history = list(self._checkpoint["history"])
                self.resumed_from = (stage, saved["epoch"])
        for epoch in range(start, count):
            yield epoch
            self._stages[stage] = {"epoch": epoch, "state": _snapshot(state)}
            self._save(stage, force=epoch == count - 1)

    def _save(self, stage: str, force: bool = False) -> None:
        """Write the checkpoint (atomically: a temp file, then a rename). A checkpoint is only a
        shortcut for a rerun after a kill: if it cannot be written (disk full, quota, a cache
        directory that went away), the run says so once and trains on without checkpoints."""
        if not self._saving:
            return
        now = time.monotonic()
        if not force and now - self._last_save < self.checkpoint_every_s:
            return
        payload = {"key": self.checkpoint_key or self.spec.key(), "current": stage, "stages": self._stages,
                   "history": self.history, "rng": _get_rng(self.generator, self.device), "trained_s": self.trained_s(),
                   "threads": torch.get_num_threads()}
        path = Path(self.checkpoint_path)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(payload, tmp)
            with open(tmp, "rb+") as written:  # on disk before the rename: a power cut leaves the old
                os.fsync(written.fileno())     # checkpoint or the new one, never a torn one
            os.replace(tmp, path)
        except (OSError, RuntimeError) as exc:  # torch reports a short write as a RuntimeError
            self._saving = False
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            print(f"bench: cannot write the checkpoint {path} ({_write_failure(exc, path)}); this run goes on "
                  "without new checkpoints (a kill now loses the epochs since the last one written)", file=sys.stderr)
            return
        self._checkpoint = payload
        self._last_save = now

    def trained_s(self) -> float:
        """Seconds this run has trained so far, over all its attempts: this attempt's since the
        run was set up, plus the earlier attempts' up to the checkpoint this one resumed from (what
        a kill lost after that checkpoint is trained again, and counted once). An uninterrupted
        run's figure is its own; ``bench table --metric minutes`` shows it."""
        return self._earlier_s + time.monotonic() - self._attempt_start

    @property
    def checkpoint_found(self) -> bool:
        """Whether this run starts from the checkpoint of an earlier, killed attempt."""
        return self._checkpoint is not None

    def checkpoint_position(self) -> str:
        """Where the checkpoint found stopped, e.g. ``train, 3 epochs done`` ('' without one)."""
        if not self._checkpoint:
            return ""
        stage = self._checkpoint.get("current")
        done = self._checkpoint.get("stages", {}).get(stage, {}).get("epoch", -1) + 1
        text = f"{stage}, {done} epoch{'s' * (done != 1)} done"
        threads = self._checkpoint.get("threads")
        if self.device.type == "cpu" and threads is not None and threads != torch.get_num_threads():
            text += (f"; it trained with {threads} torch thread{'s' * (threads != 1)}, now "
                     f"{torch.get_num_threads()}: its numbers differ by float rounding from a run never stopped")
        return text

    # --- speed (bench/capture.py) ---------------------------------------------------------
    @property
    def channels_last(self) -> bool:
        """Models and batches in channels_last memory format: on CUDA only."""
        return self.device.type == "cuda"

    def autocast(self):
        """The context for forward passes at the spec's precision (bf16 autocast or nothing)."""
        return autocast(self.device, self.spec.precision)

    def step_graph(self, fn, *, name: str, optimizers=(), warmup: int = 2) -> StepGraph:
        """``fn`` (a step on batch plans) captured as a CUDA graph on CUDA unless ``--no-graph``."""
        step = StepGraph(fn, name=name, device=self.device, enabled=self.graph, optimizers=optimizers,
                         warmup=warmup)
        self.steps.append(step)
        return step

    def step_forward(self, model: nn.Module, loader):
        """What a CE-style step calls for the classifier's forward on ``loader``'s batches:
        ``model``, or under ``bench run --compile`` ``model`` compiled by ``torch.compile`` for the
        loader's full batches once a check against eager passed (:mod:`bench.compiled`). Where the
        check refuses or compiling fails, the run says why once and its steps run uncompiled."""
        return self.step_forwards([model], loader)[0]

    def step_forwards(self, models: list[nn.Module], loader) -> list:
        """:meth:`step_forward` for a loop that trains several networks (Co-teaching's two): all
        compiled, or where any is refused, all as they are."""
        if not self.compile_steps:
            return list(models)
        from bench.compiled import checked_forwards

        forwards, status = checked_forwards(models, loader.example(), self.spec.precision)
        if status != "compiled" and all(s == "compiled" for s in self._compile_status):  # the first refusal
            print(f"bench: {status}; this loop's steps run uncompiled", file=sys.stderr)
        self._compile_status.append(status)
        return forwards

    @property
    def compile_mode(self) -> str | None:
        """How ``--compile`` went, for env: ``compiled`` (every loop), else ``uncompiled: <the first
        reason>`` or ``1 of 3 loops compiled: <the first reason>``; None without ``--compile`` or
        where no loop asked (meta steps are not compiled)."""
        asked = len(self._compile_status)
        refused = [s for s in self._compile_status if s != "compiled"]
        if not refused:
            return "compiled" if asked else None
        done = "uncompiled" if len(refused) == asked else f"{asked - len(refused)} of {asked} loops compiled"
        return f"{done}: {refused[0]}"

    @property
    def step_mode(self) -> str:
        """How this run's steps ran: captured, eager, or eager after a failed capture (for env)."""
        modes = sorted({s.mode for s in self.steps})
        return ", ".join(modes) if modes else "eager"

    # --- building blocks -----------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def model(self, num_classes: int | None = None, *, adapt=None) -> nn.Module:
        """A fresh backbone for this spec, on the run's device; ``adapt(model) -> model`` changes it
        before it is placed there (LDAM's cosine classifier; a fused group adapts each run's)."""
        in_channels = self.data.x_train.shape[-1]
        model = build_model(self.spec.model, num_classes or self.num_classes, in_channels, self.spec.init)
        if adapt is not None:
            model = adapt(model)
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def net(self, make) -> nn.Module:
        """An auxiliary network (a weighting net) ``make()`` builds, on the run's device (a fused
        group fuses one per run)."""
        return make().to(self.device)

    def loader(self, split: str = "train", *, batch_size: int | None = None, shuffle: bool = True,
               indices: np.ndarray | None = None, drop_last: bool = False, labels: np.ndarray | None = None,
               augment: bool = True):
        """Batches of (x, y, idx) for ``train`` (observed labels), ``meta`` or ``test``.

        ``indices`` restricts the training pool (e.g. the samples a selection method keeps); the
        yielded ``idx`` are then positions in ``indices``. ``labels`` replaces the labels.
        ``augment=False`` turns the dataset's training augmentation off (an evaluation pass over
        training samples); the test split is never augmented.
        """
        from bench.data import Loader

        ds = self.data.dataset
        if split == "train":
            x, y, size = self.data.x_train, self.data.train_y, self.spec.batch_size
        elif split == "meta":
            x, y, size = self.data.x_meta, self.data.y_meta, self.spec.meta_batch_size
        elif split == "test":
            x, y, size = self.data.x_test, self.data.y_test, 1000
        else:
            raise ValueError(f"unknown split {split!r}")
        if labels is not None:
            y = labels
        if indices is not None:
            x, y = x[indices], y[indices]
        augment = augment and ds.augment and split != "test"
        return Loader(x, y, batch_size=batch_size or size, device=self.device, mean=ds.mean, std=ds.std,
                      augment=augment, shuffle=shuffle and split != "test", drop_last=drop_last,
                      generator=self.generator, channels_last=self.channels_last)

    def sgd(self, params, lr: float | None = None) -> torch.optim.SGD:
        """The protocol's optimiser (SGD with momentum, Nesterov and weight decay)."""
        s = self.spec
        return torch.optim.SGD(params, lr=s.lr if lr is None else lr, momentum=s.momentum,
                               nesterov=s.nesterov and s.momentum > 0, weight_decay=s.weight_decay)

    def lr_at(self, epoch: int) -> float:
        s = self.spec
        return lr_at(epoch, lr=s.lr, warmup_epochs=s.warmup_epochs, milestones=s.milestones, lr_decay=s.lr_decay)

    @property
    def first_drop(self) -> int:
        """The first learning-rate milestone (where DRW, AUM and CurveNet switch)."""
        return min(self.spec.milestones) if self.spec.milestones else self.spec.epochs

    # --- evaluation and reporting ----------------------------------------------------------
    def evaluate(self, model: nn.Module) -> dict:
        """Test accuracy overall, per class and per shot group (PROTOCOL.md §3; no augmentation)."""
        if self._test_loader is None:
            self._test_loader = self.loader("test")
        pred, target = predict(model, self._test_loader)
        return accuracy_report(pred, target, self.num_classes, self.data.shot_counts)

    def log(self, epoch: int, model: nn.Module | None = None, *, stage: str = "train", **metrics) -> None:
        """Record one epoch of ``stage``; with ``model`` it is evaluated on the test set too.

        Raises :class:`bench.train.Diverged` when a metric is NaN or infinite, or ``model``'s
        weights or buffers are.
        """
        # a one-element tensor as its Python number (an integer count stays an int)
        metrics = {k: (v.item() if isinstance(v, torch.Tensor) else float(v) if isinstance(v, np.floating) else v)
                   for k, v in metrics.items()}
        check_finite(epoch, stage, **metrics)
        if model is not None:
            check_finite_model(epoch, stage, model)
        self.log_row(epoch, stage, metrics, self.evaluate(model) if model is not None else None)

    def log_row(self, epoch: int, stage: str, metrics: dict, report: dict | None = None) -> None:
        """Append (or, on a resumed run, replace) one history row: ``metrics`` and, with a test
        ``report`` (:meth:`evaluate`), its accuracies; then show it (``progress``)."""
        row = {"stage": stage, "epoch": epoch, **metrics}
        if report is not None:
            row.update(test_acc=report["acc"], many=report["many"], medium=report["medium"], few=report["few"])
        # a resumed run replays the code between stages: a row logged again replaces the old one
        same = [i for i, h in enumerate(self.history) if (h["stage"], h["epoch"]) == (stage, epoch)]
        if same:
            self.history[same[0]] = row
        else:
            self.history.append(row)
        if self.progress is not None:
            self.progress(row)

    @property
    def runs(self) -> int:
        """How many runs this context trains at once: 1 (a fused group's is K, bench/fused_runs.py)."""
        return 1

    @property
    def member_runs(self) -> list[Run]:
        """The runs this context trains, each with its own spec and data: this one (a fused
        group's are its K members)."""
        return [self]

    def pooled(self, get):
        """A per-sample table as the batches' ``idx`` index it: ``get(self)`` (a fused group
        interleaves its members' tables)."""
        return get(self)

    @contextlib.contextmanager
    def reseeded(self, seed_of):
        """A stage with randomness of its own (CurveNet's probe): inside, torch's global RNG starts
        at ``torch.manual_seed(seed_of(spec))`` and the run's loaders draw from a generator of that
        seed; after it both are as before, so what follows is the same whether the stage ran or its
        result came from a cache."""
        devices = [self.device] if self.device.type == "cuda" else []
        saved = self.generator
        with torch.random.fork_rng(devices=devices):
            seed = seed_of(self.spec)
            torch.manual_seed(seed)
            self.generator = torch.Generator().manual_seed(seed)
            try:
                yield
            finally:
                self.generator = saved

    def per_run(self, make):
        """What ``make(run)`` builds from a run's own data (a loss with its class weights), for each
        run this context trains: here ``make(self)`` (a fused group's: one per member, a
        :class:`PerRun`, which :meth:`run_losses` gives each run its own of)."""
        return make(self)

    def alone(self, train):
        """``train(run) -> model`` for each run this context trains, each on its own: a stage whose
        runs cannot share batches (AUM's retrain on a kept subset of each run's own size). Here
        ``train(self)``; a fused group trains its members one after another and returns a
        :class:`PerRun` of their models (bench/fused_runs.py)."""
        return train(self)

    def run_losses(self, loss_fn, logits: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, epoch: int
                   ) -> torch.Tensor:
        """The batch loss of each run this context trains, shape ``(runs,)``: here ``loss_fn``'s one
        loss (a fused group calls it, or each run's own of a :class:`PerRun`, on each run's rows)."""
        return loss_fn(logits, y, idx, epoch).reshape(1)

    def record(self, name: str, values) -> None:
        """Store a per-sample value (one entry per training-pool sample, or a 2-D array of rows)."""
        if isinstance(values, torch.Tensor):
            values = values.detach().cpu().numpy()
        values = np.asarray(values)
        if values.ndim == 0 or values.shape[0] != len(self.data.train_y):
            raise ValueError(f"record {name!r}: expected {len(self.data.train_y)} rows, got shape {values.shape}")
        if values.dtype.kind not in "biuf":  # the store keeps numbers (flags come back as 0.0 / 1.0)
            raise ValueError(f"record {name!r}: values must be numbers or booleans, got dtype {values.dtype}")
        self.records[name] = values


class PerRun(list):
    """One object per run of a fused group, in member order (:meth:`Run.per_run`)."""


# ------------------------------------------------------------------------ checkpoint helpers

def _load_checkpoint(path: Path | None, key: str) -> dict | None:
    """The checkpoint at ``path`` if it is this run's (its stored key is ``key``), else None.

    A checkpoint we cannot read, or one written for another run (a file copied or renamed by
    hand, a cache shared by mistake), is only a lost shortcut: the run starts over."""
    if path is None or not Path(path).exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt, from another torch: all the same here
        print(f"bench: the checkpoint {path} cannot be read ({type(exc).__name__}); the run starts over",
              file=sys.stderr)
        return None
    if not isinstance(payload, dict) or payload.get("key") != key:
        print(f"bench: the checkpoint {path} belongs to another run; the run starts over", file=sys.stderr)
        return None
    return payload


def _write_failure(exc: BaseException, path: Path) -> str:
    """Why a write failed, with the free space where it was written (torch's own message for a
    full disk, ``unexpected pos ...``, does not say)."""
    import shutil

    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
    existing = Path(path).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        return reason
    return f"{reason.splitlines()[0]}; {free / 2**20:.0f} MiB free there"


def _snapshot(state: dict[str, Any]) -> dict[str, Any]:
    """Deep copies of each object's state (later stages may go on mutating the objects)."""
    out = {}
    for name, obj in state.items():
        if isinstance(obj, torch.Tensor):
            out[name] = obj.detach().cpu().clone()
        elif hasattr(obj, "state_dict"):
            out[name] = copy.deepcopy(_to_cpu(obj.state_dict()))
        else:
            raise TypeError(f"checkpoint state {name!r}: {type(obj).__name__} has no state_dict")
    return out


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _restore(state: dict[str, Any], saved: dict[str, Any]) -> None:
    for name, obj in state.items():
        if isinstance(obj, torch.Tensor):
            with torch.no_grad():
                obj.copy_(saved[name])
        else:
            obj.load_state_dict(saved[name])


def _get_rng(generator: torch.Generator, device: torch.device) -> dict:
    """The random state a resumed run needs: torch's global one, the run's generator and, on CUDA,
    the run's own device's (not every visible GPU's: a run resumed on a machine with fewer GPUs, or
    by a worker given another device, restores it into the device it runs on)."""
    rng = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if device.type == "cuda":
        rng["cuda_device"] = torch.cuda.get_rng_state(device)
    return rng


def _set_rng(rng: dict, generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["generator"])
    if device.type == "cuda" and "cuda_device" in rng:
        torch.cuda.set_rng_state(rng["cuda_device"], device)
