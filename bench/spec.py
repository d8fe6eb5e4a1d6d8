"""Run specifications, presets and the paper's grids.

A :class:`RunSpec` is everything that determines a run: the data (dataset, bias, data seed), the
classifier protocol (model, optimiser, schedule), the method and all its hyperparameters, and the
training seed. Its :meth:`RunSpec.key` is a stable hash of all of it, so the store can tell a run
that is already done from a new one (DomainBed keys its jobs the same way).

Presets
-------
``paper``  The grid protocol of PROTOCOL.md §3 (CurveNet's allocate stage, used for every method):
           ResNet-32, SGD lr 0.1, momentum 0.9, Nesterov, weight decay 5e-4, batch 128 (meta batch
           128), 200 epochs, linear warm-up over 5 epochs, lr x0.1 at epochs 80 and 100.
``quick``  The default, a user's first run: the embedded fmnist-mini, the small CNN, the same
           protocol scaled to 20 epochs (lr x0.1 at epochs 8 and 10, i.e. the paper's 80/200 and
           100/200), on a noisy and imbalanced cell (imbalance 10, flip2 0.4). The warm-up is 2
           epochs (lr 0.05, 0.1): 5/200 scaled rounds to none (and a one-epoch linear warm-up would
           run at the full lr, i.e. no warm-up either). That broke LDAM-DRW's cosine head
           (s = 30) on the rarest class (0% test accuracy in 2 of 3 seeds, see methods/ldam_drw.py).

``--epochs N`` rescales the warm-up and milestones by N / (preset epochs) unless they are set
explicitly (``--set milestones=60,80``); a scaled warm-up is at least 2 epochs for N >= 10.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field, fields

from bench.data.bias import BiasSpec, has_noise, noise_text, number_text
from bench.errors import BenchError


@dataclass(frozen=True)
class Cell:
    """One point of the noise x imbalance grid on one dataset."""

    dataset: str
    imbalance: float
    noise_type: str
    noise_rate: float

    def __post_init__(self):
        BiasSpec(imbalance=self.imbalance, noise_type=self.noise_type, noise_rate=self.noise_rate).validate()
        if not has_noise(self.noise_type, self.noise_rate):  # 'flip2:0' and 'none' are the same data:
            object.__setattr__(self, "noise_type", "none")  # one key for both

    def label(self) -> str:
        return cell_text(self.dataset, self.imbalance, self.noise_type, self.noise_rate)


def cell_text(dataset: str, imbalance: float, noise_type: str, noise_rate: float) -> str:
    """How labels write a cell, e.g. ``cifar10 imb10 flip2:0.4`` (numbers exact: ``number_text``);
    :meth:`Cell.label` and the tables' ``bench.summary.cell_label`` of a stored run both use it."""
    return f"{dataset} imb{number_text(imbalance)} {noise_text(noise_type, noise_rate)}"


# Fields added after runs were first stored: left out of a spec's dict (and so of its key) at their
# default, so that earlier keys still hold. Readers of stored specs fill them back in.
OMITTED_WHEN_DEFAULT = {"precision": "fp32", "train_on_meta": False, "data_sha256": ""}
# The fields that only draw another sample of the same experiment: runs differing in nothing else
# are averaged together in tables.
SEED_FIELDS = ("seed", "data_seed")


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines one run. Frozen; build variants with :meth:`replace`."""

    method: str
    dataset: str = "fmnist-mini"
    imbalance: float = 10.0
    noise_type: str = "flip2"
    noise_rate: float = 0.4
    meta_per_class: int = 20
    seed: int = 0
    data_seed: int = 0
    preset: str = "quick"
    model: str = "small_cnn"
    init: str = "kaiming"
    epochs: int = 20
    batch_size: int = 128
    meta_batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: int = 2
    milestones: tuple[int, ...] = (8, 10)
    lr_decay: float = 0.1
    params: tuple[tuple[str, object], ...] = field(default=())  # the method's hyperparameters
    precision: str = "fp32"  # "fp32" or "bf16" (autocast, bench/capture.py); part of the key if not fp32
    # PROTOCOL.md §7's fair-data option: a method without a meta set also trains on the clean meta
    # samples (BiasedData.with_meta_in_pool); never set for MW-Net and CurveNet (Method.uses_meta_set)
    train_on_meta: bool = False
    # npz:PATH data: the first 16 hex digits of the file's sha256 (a changed file is new data, so
    # new runs); empty for the built-in datasets, whose files are checked against known checksums
    data_sha256: str = ""

    def __post_init__(self):
        from bench.capture import check_precision
        check_precision(self.precision)

    @property
    def cell(self) -> Cell:
        return Cell(self.dataset, self.imbalance, self.noise_type, self.noise_rate)

    @property
    def method_params(self) -> dict:
        return dict(self.params)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        d["params"] = {k: _jsonable(v) for k, v in self.params}
        for name, default in OMITTED_WHEN_DEFAULT.items():  # keys of runs stored before it existed hold
            if d[name] == default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RunSpec:
        d = dict(d)
        d["milestones"] = tuple(d["milestones"])
        d["params"] = tuple(sorted((k, _hashable(v)) for k, v in d["params"].items()))
        return cls(**d)

    def key(self) -> str:
        """Stable 16-hex-digit hash of the full spec (method hyperparameters included)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def replace(self, **changes) -> RunSpec:
        return dataclasses.replace(self, **changes)


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v


# ---------------------------------------------------------------------------------- presets

PRESETS: dict[str, dict] = {
    "paper": dict(dataset="cifar10", model="resnet32", epochs=200, batch_size=128, meta_batch_size=128,
                  lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, warmup_epochs=5,
                  milestones=(80, 100), lr_decay=0.1, init="kaiming"),
    "quick": dict(dataset="fmnist-mini", model="small_cnn", epochs=20, batch_size=128, meta_batch_size=128,
                  lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, warmup_epochs=2,
                  milestones=(8, 10), lr_decay=0.1, init="kaiming",
                  imbalance=10.0, noise_type="flip2", noise_rate=0.4),
}

PROTOCOL_FIELDS = tuple(f.name for f in fields(RunSpec) if f.name not in
                        ("method", "dataset", "imbalance", "noise_type", "noise_rate", "seed",
                         "data_seed", "preset", "params", "data_sha256"))


def scale_schedule(preset: dict, epochs: int) -> dict:
    """Warm-up and milestones of ``preset`` rescaled to ``epochs``: each rounded (Python's round,
    half to even), at least epoch 1; milestones that round to the same epoch merge into one drop
    (the quick preset at ``--epochs 9``: 3.6 and 4.5 give one drop at 4, so the lr ends x0.1, not
    x0.01), as a schedule this short has no room for both."""
    if epochs < 1:
        raise BenchError(f"epochs must be at least 1, got {epochs}")
    base = preset["epochs"]
    milestones = tuple(sorted({max(1, round(m * epochs / base)) for m in preset["milestones"]}))
    warmup = round(preset["warmup_epochs"] * epochs / base)
    if preset["warmup_epochs"] and epochs >= 10:
        warmup = max(2, warmup)  # one epoch of linear warm-up would be the full lr: none at all
    return dict(epochs=epochs, milestones=milestones, warmup_epochs=warmup)


# ------------------------------------------------------------------------------------ grids

def _cells(dataset, imbalances, noise_type, rates):
    return [Cell(dataset, float(i), noise_type, float(r)) for i in imbalances for r in rates]


# CurveNet paper grids (PROTOCOL.md §6). Table 2 and 3 are subsets; the ablation tables (6, 7, 9,
# 10) are run on the CurveNet code's default configuration, CIFAR-10 imbalance 20 with 0.4 noise
# (config/cycle/cifar10_unif/train_c0.4_imb0.05.yaml), here with the paper's flip2 noise.
GRIDS: dict[str, list[Cell]] = {
    "cifar10": _cells("cifar10", (1, 10, 20, 50, 100, 200), "flip2", (0, 0.2, 0.4)),
    "cifar100": _cells("cifar100", (1, 10, 20), "uniform", (0, 0.2, 0.4, 0.6)),
    "table2": _cells("cifar10", (50, 100, 200), "none", (0,)) + _cells("cifar10", (1,), "flip2", (0, 0.2, 0.4)),
    "table3": _cells("cifar100", (10, 20), "uniform", (0.2, 0.4, 0.6)),
    "ablation": _cells("cifar10", (20,), "flip2", (0.4,)),
    "quick": _cells("fmnist-mini", (10,), "flip2", (0.4,)),
    "quick-grid": _cells("fmnist-mini", (1, 10, 50), "flip2", (0, 0.4)),
}
GRID_PRESET = {"cifar10": "paper", "cifar100": "paper", "table2": "paper", "table3": "paper",
               "ablation": "paper", "quick": "quick", "quick-grid": "quick"}


def get_grid(name: str) -> list[Cell]:
    if name not in GRIDS:
        raise BenchError(f"unknown grid {name!r}; choose from {', '.join(GRIDS)}")
    return GRIDS[name]


# ------------------------------------------------------------------------------- overrides

def comma_items(text: str, what: str) -> list[str]:
    """The stripped items of a comma-separated list; an empty one (``0,,1``, ``10,``) is a
    BenchError naming ``what`` (the option), not silently dropped."""
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise BenchError(f"{what} {text!r} has an empty item (two commas in a row, or one at an end)")
    return items


def parse_value(text: str, current):
    """Parse ``text`` to the type of ``current`` (bool, int, float, str or a tuple of ints/floats).
    A float -0 is read as 0 (the same setting, so the same run key)."""
    try:
        if isinstance(current, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            value = float(text)
            if not math.isfinite(value):
                raise ValueError(text)
            return value + 0.0  # -0.0 -> 0.0
        if isinstance(current, tuple):
            kind = type(current[0]) if current else int
            items = [t.strip() for t in text.split(",")]
            if not all(items):
                raise ValueError(text)
            return tuple(kind(t) + kind(0) for t in items)  # (a float -0.0 -> 0.0)
        if current is None:
            return _guess(text)
        return text
    except ValueError:
        kind = type(current).__name__
        raise BenchError(f"cannot read {text!r} as {kind}") from None


def _guess(text: str):
    for kind in (int, float):
        try:
            return kind(text) + kind(0)  # (a float -0.0 -> 0.0)
        except ValueError:
            pass
    return None if text.lower() == "none" else text


def parse_sets(items: list[str]) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Split ``--set key=value`` items into protocol overrides and per-method overrides.

    ``lr=0.05`` sets a protocol field; ``focal.gamma=2`` sets method ``focal``'s ``gamma``.
    """
    protocol: dict[str, str] = {}
    per_method: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise BenchError(f"malformed --set {item!r}; expected key=value, e.g. lr=0.05 or focal.gamma=2")
        method, dot, name = key.partition(".")
        into = per_method.setdefault(method, {}) if dot else protocol
        setting = name if dot else key
        if into.get(setting, value.strip()) != value.strip():
            raise BenchError(f"--set {key} is given twice ({into[setting]} and {value.strip()}); give it once")
        into[setting] = value.strip()
    return protocol, per_method


def apply_protocol_overrides(base: dict, overrides: dict[str, str]) -> dict:
    """``base`` with ``--set`` protocol overrides parsed to the field's type (the preset's value,
    else :class:`RunSpec`'s default, e.g. for ``meta_per_class`` and ``precision``)."""
    defaults = {f.name: f.default for f in fields(RunSpec)}
    out = dict(base)
    for key, text in overrides.items():
        if key not in PROTOCOL_FIELDS:
            raise BenchError(f"unknown setting {key!r}; protocol settings are {', '.join(PROTOCOL_FIELDS)}"
                             " (method settings take the method name: focal.gamma=2)")
        try:
            out[key] = parse_value(text, base.get(key, defaults[key]))
        except BenchError as exc:
            raise BenchError(f"{key}={text}: {exc}") from None  # (from --set or --sweep)
    return out


def check_protocol(protocol: dict) -> None:
    """BenchError (one line) for a protocol value no run can train with, before any run starts
    (the precision is checked where every RunSpec is made)."""
    from bench.models import INIT_SCHEMES, MODELS

    def need(ok: bool, what: str, key: str) -> None:
        if not ok:
            raise BenchError(f"{key} must be {what}, got {protocol[key]!r}")

    for key in ("epochs", "batch_size", "meta_batch_size"):
        need(protocol[key] >= 1, "at least 1", key)
    need(protocol["lr"] > 0, "positive", "lr")
    need(0 <= protocol["momentum"] < 1, "in [0, 1)", "momentum")
    need(protocol["weight_decay"] >= 0, "non-negative", "weight_decay")
    need(protocol["warmup_epochs"] >= 0, "non-negative", "warmup_epochs")
    need(protocol["lr_decay"] > 0, "positive", "lr_decay")
    milestones = protocol["milestones"]
    need(all(m >= 1 for m in milestones) and list(milestones) == sorted(set(milestones)),
         "increasing positive epochs, e.g. 80,100", "milestones")
    epochs = protocol["epochs"]
    need(all(m <= epochs for m in milestones), f"at most the {epochs} epochs (--epochs scales them)", "milestones")
    need(protocol["warmup_epochs"] <= epochs, f"at most the {epochs} epochs", "warmup_epochs")
    need(not protocol["nesterov"] or protocol["momentum"] > 0, "false when momentum is 0 (Nesterov needs "
         "momentum)", "nesterov")
    if "meta_per_class" in protocol:
        need(protocol["meta_per_class"] >= 0, "non-negative", "meta_per_class")
    if protocol["model"] not in MODELS:
        raise BenchError(f"unknown model {protocol['model']!r}; choose from {', '.join(sorted(MODELS))}")
    if protocol["init"] not in INIT_SCHEMES:
        raise BenchError(f"unknown init {protocol['init']!r}; choose from {', '.join(INIT_SCHEMES)}")
