"""What ``bench run``'s arguments ask for, and back: the :class:`RunSpec` of every run a command
names (methods x cells x seeds, with the preset, ``--epochs`` and ``--set`` applied, for every
combination of ``--sweep`` values; a paper table's runs; one ``--shard`` of them), and the
command that asks for one stored run
(:func:`run_command`, which ``bench show KEY`` prints).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools

from bench.data.bias import REAL_NOISE, noise_text, number_text
from bench.data.cli import default_meta_per_class, parse_noise
from bench.errors import BenchError
from bench.spec import (
    GRID_PRESET,
    PRESETS,
    PROTOCOL_FIELDS,
    Cell,
    RunSpec,
    apply_protocol_overrides,
    check_protocol,
    comma_items,
    get_grid,
    parse_sets,
    parse_value,
    scale_schedule,
)
from bench.summary import setting_text


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(t) for t in comma_items(text, what)]
    except ValueError:
        raise BenchError(f"{what} must be a comma-separated list of numbers, got {text!r}") from None


MAX_SEED = 2 ** 63 - 1


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(t) for t in comma_items(text, "--seeds")]
    except ValueError:
        raise BenchError(f"--seeds must be a comma-separated list of integers, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds):
        raise BenchError(f"--seeds must be non-negative integers, got {text!r}")
    if any(s > MAX_SEED for s in seeds):  # the store keeps a seed as an SQLite (64-bit signed) integer
        raise BenchError(f"--seeds must be at most 2**63 - 1, got {text!r}")
    return seeds


def _check_real_noise(dataset: str) -> None:
    """BenchError unless ``dataset`` is your own file (noise ``real``: its labels as they are)."""
    if not dataset.startswith("npz:"):
        raise BenchError(f"--noise real trains on your own npz file's labels as they are; {dataset}'s are clean "
                         "(add synthetic noise with --noise TYPE:RATE)")


def _loaded(dataset: str, data_dir):
    from bench.execute import _dataset
    return _dataset(dataset, None if data_dir is None else str(data_dir))


def _check_dataset(name: str) -> None:
    from bench.data import DATASET_NAMES
    if name not in DATASET_NAMES and not name.startswith("npz:"):
        raise BenchError(f"unknown dataset {name!r}; choose from {', '.join(DATASET_NAMES)} or npz:PATH")


def _same_setting(option, text: str | None, key: str, kind):
    """The value of ``--KEY`` or ``--set KEY=...`` (the same setting); BenchError if both are
    given and disagree."""
    if text is None:
        return option
    try:
        value = parse_value(text, kind())
    except BenchError as exc:
        raise BenchError(f"{key}={text}: {exc}") from None  # (from --set or --sweep)
    if option is not None and option != value:
        raise BenchError(f"--{key.replace('_', '-')} {option} and {key}={text} (--set or --sweep) disagree; "
                         "give it once")
    return value


def build_specs(args, notes: list[str] | None = None) -> list[RunSpec]:
    """The RunSpecs that ``bench run`` asks for: methods x cells x seeds. A method setting given
    where it does nothing (:meth:`methods.base.Method.inert_settings`) stays at its preset's value,
    and a line saying so goes to ``notes``; so does ``meta_batch_size`` for the methods that read no
    meta set."""
    import methods

    if args.grid and (args.imbalance or args.noise):
        raise BenchError("give either --grid or --imbalance/--noise, not both")
    cells_from_grid = get_grid(args.grid) if args.grid else getattr(args, "cells", None)
    preset_name = args.preset or (GRID_PRESET[args.grid] if args.grid else "quick")
    if preset_name not in PRESETS:
        raise BenchError(f"unknown preset {preset_name!r}; choose from {', '.join(PRESETS)}")
    preset = dict(PRESETS[preset_name])
    cell_defaults = {k: preset.pop(k) for k in ("imbalance", "noise_type", "noise_rate") if k in preset}
    protocol_sets, method_sets = parse_sets(args.set or [])
    epochs = _same_setting(args.epochs, protocol_sets.pop("epochs", None), "epochs", int)
    if epochs is not None:  # --set epochs=N is --epochs N: the schedule scales with it
        preset.update(scale_schedule(PRESETS[preset_name], epochs))
    model = _same_setting(args.model, protocol_sets.pop("model", None), "model", str)
    if model:
        preset["model"] = model
    precision = _same_setting(getattr(args, "precision", None), protocol_sets.pop("precision", None),
                              "precision", str)
    if precision:
        preset["precision"] = precision
    if _same_setting(getattr(args, "train_on_meta", None) or None, protocol_sets.pop("train_on_meta", None),
                     "train_on_meta", bool):
        preset["train_on_meta"] = True
    preset = apply_protocol_overrides(preset, protocol_sets)
    check_protocol(preset)
    meta_per_class = preset.pop("meta_per_class", None)  # --set meta_per_class=N = --meta-per-class N
    if args.meta_per_class is not None:
        if meta_per_class is not None and meta_per_class != args.meta_per_class:
            raise BenchError(f"--meta-per-class {args.meta_per_class} and --set meta_per_class={meta_per_class} "
                             "disagree")
        meta_per_class = args.meta_per_class

    if cells_from_grid is not None:
        if args.dataset and any(c.dataset != args.dataset for c in cells_from_grid):
            raise BenchError(f"the grid is defined on {cells_from_grid[0].dataset}, not {args.dataset}")
        cells = cells_from_grid
    else:
        dataset = args.dataset or preset["dataset"]
        imbalances = _floats(args.imbalance, "--imbalance") if args.imbalance else [cell_defaults.get("imbalance", 1.0)]
        noises = ([parse_noise(t) for t in comma_items(args.noise, "--noise")] if args.noise
                  else [(cell_defaults.get("noise_type", "none"), cell_defaults.get("noise_rate", 0.0))])
        cells = [Cell(dataset, imb, kind, rate) for imb, (kind, rate) in itertools.product(imbalances, noises)]
    digests, meta_of = {}, {}  # per dataset: its file's digest (npz), its meta set's size per class
    for dataset in {c.dataset for c in cells}:
        _check_dataset(dataset)
        own = None
        if dataset.startswith("npz:"):  # your own file: its runs are keyed by its contents too
            from bench.data.bias import own_meta_per_class
            from bench.execute import dataset_digest
            digests[dataset] = dataset_digest(dataset, args.data_dir)
            own = own_meta_per_class(_loaded(dataset, args.data_dir))  # x_meta: all of it that stays balanced
        meta_of[dataset] = (meta_per_class if meta_per_class is not None else
                            own if own is not None else default_meta_per_class(dataset))
        if any(c.dataset == dataset and c.noise_type == REAL_NOISE for c in cells):
            _check_real_noise(dataset)
            from bench.data.bias import UNTRUSTED_META, untrusted_meta_set
            if untrusted_meta_set(_loaded(dataset, args.data_dir), REAL_NOISE, meta_of[dataset]):
                raise BenchError(UNTRUSTED_META.format(name=dataset))

    method_names = comma_items(args.methods, "--methods") if args.methods else []
    if not method_names:
        raise BenchError("--methods needs at least one method name (see `python -m bench list`)")
    method_classes = {name: methods.get(name) for name in method_names}
    for name in method_sets:
        if name not in method_classes:
            if not name:
                raise BenchError(f"--set .{next(iter(method_sets[name]))}=...: no method before the dot "
                                 "(METHOD.KEY=VALUE, e.g. focal.gamma=2)")
            methods.get(name)  # a typo: "unknown method 'curvnet'; did you mean 'curvenet'? ..."
            raise BenchError(f"--set {name}.* names a method that is not in --methods ({', '.join(method_names)})")
    params = {name: cls.resolve_params(preset_name, method_sets.get(name)) for name, cls in method_classes.items()}
    for name, cls in method_classes.items():
        params[name] = without_inert(cls, preset_name, params[name], notes)

    from methods.base import params_items
    seeds = _seeds(args.seeds)
    if args.data_seed is not None and not 0 <= args.data_seed <= MAX_SEED:
        raise BenchError(f"--data-seed must lie in 0 .. 2**63 - 1, got {args.data_seed}")
    if meta_per_class is not None and meta_per_class < 0:
        raise BenchError(f"--meta-per-class must be non-negative, got {meta_per_class}")
    protocol = {k: v for k, v in preset.items() if k not in ("dataset", "train_on_meta")}
    train_on_meta = bool(preset.get("train_on_meta", False))
    if train_on_meta and all(cls.uses_meta_set for cls in method_classes.values()) and not getattr(args, "paper", None):
        raise BenchError("--train-on-meta adds the meta set to the pool of methods without one; "
                         f"{', '.join(method_names)} learn from it already")
    # meta_batch_size does nothing for a method that learns nothing from the meta set: its runs keep
    # the preset's value, so that `--sweep meta_batch_size=64,128` trains CE once, not twice
    preset_meta_batch = PRESETS[preset_name].get("meta_batch_size", protocol["meta_batch_size"])
    inert_meta_batch = [name for name in method_names if not method_classes[name].uses_meta_set]
    if inert_meta_batch and protocol["meta_batch_size"] != preset_meta_batch and notes is not None:
        notes.append(f"meta_batch_size={protocol['meta_batch_size']} does nothing for {', '.join(inert_meta_batch)} "
                     f"(no meta set read); those runs keep meta_batch_size={preset_meta_batch}, the same runs as "
                     "without it")
    specs = []
    for name, cell, seed in itertools.product(method_names, cells, seeds):
        meta = meta_of[cell.dataset]
        on_meta = train_on_meta and not method_classes[name].uses_meta_set
        own = protocol if method_classes[name].uses_meta_set else {**protocol, "meta_batch_size": preset_meta_batch}
        if on_meta and meta == 0:
            raise BenchError(f"--train-on-meta: {cell.dataset} has no meta set to add (--meta-per-class 0)")
        specs.append(RunSpec(method=name, dataset=cell.dataset, imbalance=cell.imbalance,
                             noise_type=cell.noise_type, noise_rate=cell.noise_rate, meta_per_class=meta,
                             seed=seed, data_seed=seed if args.data_seed is None else args.data_seed,
                             preset=preset_name, params=params_items(params[name]),
                             train_on_meta=on_meta, data_sha256=digests.get(cell.dataset, ""), **own))
        method_classes[name].check_spec(specs[-1])
    return specs


def without_inert(cls, preset_name: str, params, notes: list[str] | None = None):
    """``params`` with each setting that does nothing under them (``cls.inert_settings``) back at
    the preset's value: ``--sweep cb.loss=softmax,focal --set cb.gamma=2`` trains the plain
    softmax run, not a copy of it under another key. Says each one reset in ``notes``."""
    preset_params, why = cls.resolve_params(preset_name), cls.inert_settings(params)
    reset = {k: getattr(preset_params, k) for k in why if getattr(params, k) != getattr(preset_params, k)}
    if notes is not None:
        notes.extend(f"{cls.name}.{k}={getattr(params, k)} does nothing {why[k]}; those runs keep "
                     f"{cls.name}.{k}={v}, the same runs as without it" for k, v in reset.items())
    return dataclasses.replace(params, **reset) if reset else params


def run_command(spec: RunSpec, data_dir: str | None = None) -> list[str]:
    """The arguments of a ``bench run`` that asks for exactly ``spec`` (the same key): only what
    differs from the defaults (preset, cell, dataset's meta-set size, the method's settings under
    the preset). Checked by building the command's spec again: BenchError if that gives another
    key (a spec no command can ask for), or if its data cannot be read (npz:PATH)."""
    import methods
    from bench.cli import make_parser
    from methods.base import params_items

    preset = dict(PRESETS[spec.preset])
    argv = ["run", "--methods", spec.method]
    if spec.dataset != preset["dataset"]:
        argv += ["--dataset", spec.dataset]
    if spec.imbalance != preset.get("imbalance", 1.0):
        argv += ["--imbalance", number_text(spec.imbalance)]
    if (spec.noise_type, spec.noise_rate) != (preset.get("noise_type", "none"), preset.get("noise_rate", 0.0)):
        argv += ["--noise", noise_text(spec.noise_type, spec.noise_rate, clean="none")]
    if spec.seed != 0:
        argv += ["--seeds", str(spec.seed)]
    if spec.data_seed != spec.seed:
        argv += ["--data-seed", str(spec.data_seed)]
    if spec.preset != "quick":
        argv += ["--preset", spec.preset]
    if spec.model != preset["model"]:
        argv += ["--model", spec.model]
    if spec.meta_per_class != default_meta_per_class(spec.dataset):
        argv += ["--meta-per-class", str(spec.meta_per_class)]
    if spec.precision != "fp32":
        argv += ["--precision", spec.precision]
    if spec.train_on_meta:
        argv += ["--train-on-meta"]
    if spec.epochs != preset["epochs"]:
        argv += ["--epochs", str(spec.epochs)]
        preset.update(scale_schedule(PRESETS[spec.preset], spec.epochs))
    handled = ("epochs", "model", "precision", "train_on_meta", "meta_per_class")
    for name in PROTOCOL_FIELDS:
        if name not in handled and getattr(spec, name) != preset[name]:
            argv += ["--set", f"{name}={_setting_text(getattr(spec, name))}"]
    defaults = dict(params_items(methods.get(spec.method).resolve_params(spec.preset)))
    for name, value in spec.params:
        if defaults.get(name) != value:
            argv += ["--set", f"{spec.method}.{name}={_setting_text(value)}"]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    args = make_parser().parse_args(argv)
    rebuilt = build_specs(args)
    if [s.key() for s in rebuilt] != [spec.key()]:
        raise BenchError(f"no bench run command asks for run {spec.key()} (`{' '.join(argv)}` gives "
                         f"{', '.join(s.key() for s in rebuilt)})")
    return argv


def _setting_text(value) -> str:
    """A --set value as parse_value reads it back."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return repr(value) if isinstance(value, float) else str(value)


def parse_shard(text: str) -> tuple[int, int]:
    """``--shard I/N`` as (I, N), 1 <= I <= N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        index = count = 0
    if not 1 <= index <= count:
        raise BenchError(f"--shard must be I/N with 1 <= I <= N (e.g. 2/4), got {text!r}")
    return index, count


def shard_specs(specs: list[RunSpec], index: int, count: int) -> list[RunSpec]:
    """The ``index``-th (from 1) of ``count`` disjoint parts of ``specs`` (``--shard I/N``): the
    groups of runs that differ only in their seeds (what ``--fuse`` trains together) dealt out
    round-robin in the command's order, so the parts of one command are of near-equal size, each
    group whole, and together the whole grid. The same command gives the same parts."""
    from bench.fused_runs import fuse_key

    groups = list(dict.fromkeys(fuse_key(spec) for spec in specs))
    mine = set(groups[index - 1::count])
    return [spec for spec in specs if fuse_key(spec) in mine]


def paper_specs(args) -> list[RunSpec]:
    """The runs a paper table needs (``bench run --paper N`` / ``bench runs-for --paper N``).

    ``bench.paper_tables.paper_requests(N)`` lists them as requests, each a dict with ``methods`` (a
    comma-separated string), ``cells`` (list of Cell), and optionally ``set`` (list of key=value),
    ``preset`` and ``model``; the user's own --seeds, --epochs, --set and --preset apply on top (a
    method's ``--set METHOD.KEY=V`` to the requests that train that method; one for a method the
    table does not train is an error, as is a meta-set size for Table 7, which sets its own).
    """
    from bench import paper_tables

    chosen = [option for option, value in (("--methods", args.methods), ("--grid", args.grid),
                                           ("--imbalance", args.imbalance), ("--noise", args.noise),
                                           ("--dataset", args.dataset)) if value]
    if chosen:
        raise BenchError(f"--paper {args.paper} picks the table's own methods and cells; drop "
                         f"{', '.join(chosen)} (or run them without --paper)")
    requests = paper_tables.paper_requests(args.paper)
    user_sets = list(args.set or [])
    keys = [item.partition("=")[0].strip() for item in user_sets]
    if any("meta_per_class" in r for r in requests) and (args.meta_per_class is not None or "meta_per_class" in keys):
        raise BenchError(f"--paper {args.paper} sets the meta-set size of each row itself (Table 7 varies it); "
                         "drop --meta-per-class / --set meta_per_class")
    trained = {m for r in requests for m in r["methods"].split(",")}
    for key in keys:  # a method's setting: applied to the requests that train that method
        owner, dot, _ = key.partition(".")
        if dot and owner not in trained:
            raise BenchError(f"--set {key}: table {args.paper} does not train {owner!r} (its methods: "
                             f"{', '.join(sorted(trained))})")
    specs = []
    for request in requests:
        ns = argparse.Namespace(**vars(args))
        ns.methods = request["methods"]
        ns.cells, ns.grid, ns.imbalance, ns.noise = request["cells"], None, None, None
        methods_here = set(request["methods"].split(","))
        mine = [item for item, key in zip(user_sets, keys)
                if "." not in key or key.partition(".")[0] in methods_here]
        mine_keys = {item.partition("=")[0].strip() for item in mine}  # the user's settings replace the row's
        ns.set = [item for item in request.get("set", []) if item.partition("=")[0].strip() not in mine_keys]
        ns.set += mine
        ns.preset = args.preset or request.get("preset", "paper")
        ns.model = args.model or request.get("model")
        if "meta_per_class" in request:  # Table 7 varies the meta-set size per row
            ns.meta_per_class = request["meta_per_class"]
        specs.extend(build_specs(ns))
    return specs


def asked_specs(args, notes: list[str] | None = None) -> list[RunSpec]:
    """Every run a ``bench run`` command asks for: a paper table's (``--paper N``), or methods x
    cells x seeds for every combination of the ``--sweep`` values (:func:`sweep_sets`), in the
    command's order, each run once (``notes``: :func:`build_specs`)."""
    # an empty shell variable: e.g. --shard "$TASK" outside an array job must not train the whole grid
    for option in ("dataset", "imbalance", "noise", "grid", "preset", "model", "paper", "shard"):
        if getattr(args, option, None) == "":
            raise BenchError(f"--{option} is empty; give a value or leave the option out")
    if getattr(args, "paper", None):
        if getattr(args, "sweep", None):
            raise BenchError(f"--paper {args.paper} runs the table's own settings; drop --sweep")
        specs = paper_specs(args)
    else:
        methods = {m.strip() for m in (args.methods or "").split(",")}
        for item in getattr(args, "sweep", None) or []:
            owner = item.partition("=")[0].strip().partition(".")
            if owner[1] and args.methods and owner[0] not in methods:  # (no --methods: build_specs says so)
                raise BenchError(f"--sweep {owner[0]}.{owner[2]} names a method that is not in --methods "
                                 f"({args.methods})")
        specs = []
        for sets in sweep_sets(getattr(args, "sweep", None), args.set):
            specs.extend(build_specs(argparse.Namespace(**{**vars(args), "set": list(args.set or []) + sets}), notes))
    return list({spec.key(): spec for spec in specs}.values())  # --seeds 0,0 asks for one run


def sweep_sets(sweeps: list[str] | None, sets: list[str] | None = None) -> list[list[str]]:
    """``--sweep KEY=V1,V2,...`` (repeatable) as the ``--set`` items of each combination of values,
    the first sweep's values outermost; ``[[]]`` without sweeps. A key is a protocol field
    (``lr``) or a method setting (``focal.gamma``), as for ``--set``; each value is one value of
    it (a list-valued setting such as ``milestones`` takes a one-element list per value: set
    lists with ``--set``)."""
    axes: dict[str, list[str]] = {}
    for item in sweeps or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise BenchError(f"malformed --sweep {item!r}; expected KEY=V1,V2,..., e.g. focal.gamma=0.5,1,2")
        values = comma_items(text, f"--sweep {key}:")
        if key in axes:
            raise BenchError(f"--sweep {key} is given twice; put all its values in one --sweep")
        if len(set(values)) < len(values):
            raise BenchError(f"--sweep {item!r} repeats a value")
        axes[key] = values
    fixed = {item.partition("=")[0].strip() for item in sets or []}
    both = sorted(fixed & set(axes))  # (--epochs N against a sweep of epochs: build_specs says they disagree)
    if both:
        raise BenchError(f"{', '.join(both)}: give each setting in --set or in --sweep, not both")
    return [[f"{key}={value}" for key, value in zip(axes, combo)] for combo in itertools.product(*axes.values())]


def swept(spec: RunSpec, sweeps: list[str] | None) -> str:
    """The run's values of the ``--sweep`` settings that apply to it (``focal.gamma=2 lr=0.05``)."""
    shown = []
    for item in sweeps or []:
        key = item.partition("=")[0].strip()
        owner, dot, name = key.partition(".")
        if not dot:
            value = getattr(spec, key, None)
        elif owner == spec.method:
            value = dict(spec.params).get(name)
        else:
            continue
        shown.append(f"{key}={setting_text(value)}")
    return " ".join(shown)
