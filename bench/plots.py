"""Figures from the store (never from training): the CurveNet paper's Fig. 1 and Fig. 5.

``python -m bench plot curves  --run KEY | --cell DATASET:IMB:NOISE [--method curvenet] [--seed S]``
    Fig. 1: mean ± std over samples of the per-epoch probe loss, clean vs noisy samples, for one
    head class (most training samples) and one tail class (fewest), among the classes that hold
    both clean and noisy samples (``--classes`` picks others). Samples are grouped by their
    *observed* label (the label the network trained on and the curve is normalised by). Uses the
    raw probe loss if the run stored it (array ``probe_loss``), else the normalised curve CurveNet
    reads (array ``curve``); the title says which.
``python -m bench plot weights --run KEY | --cell ...``
    Fig. 5: the final per-sample weights (per-sample value ``weight``, recorded by MW-Net and
    CurveNet, and by Class-Balanced and LDAM-DRW as their classes' weights) of clean vs noisy
    samples, for every class (box plots, grouped by observed label).

``python -m bench plot separation --cell DATASET:IMB:NOISE [--method M,...] [--seed S]``
    Noise against tail, every method of a cell side by side (our figure, not the paper's): each
    method's per-sample trust (bench/analysis.py: its final weight, or minus its selection score)
    of clean samples of head classes, clean samples of tail classes and mislabelled samples, as
    box plots, with the run's noise and tail AUROCs. One run per method row (the lowest seed, or
    ``--seed``); methods that record no trust (CE, Focal) are left out.

All write a figure, a PNG by default (``--out``, default ``figures/<fig>_<key>.png``; the
separation figure ``figures/separation_<cell>_seed<S>.png``; ``--out`` ending .pdf or .svg
writes that format) and print its path. Cells are
written ``DATASET:IMBALANCE:NOISE`` with NOISE = ``none`` or ``TYPE:RATE``, e.g.
``fmnist-mini:10:flip2:0.4`` (the quick preset's default cell) or ``cifar10:20:flip2:0.4``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data.bias import noise_text, number_text, same_noise
from bench.errors import BenchError, check_creatable
from bench.store import RUNS_ONLY
from bench.summary import cell_label

# names of the per-sample arrays, in order of preference: raw probe losses, then normalised curves
RAW_CURVE_ARRAYS = ("probe_loss", "probe_losses", "loss_curve")
NORMALISED_CURVE_ARRAYS = ("curve", "curves")
FIGURES = ("curves", "weights", "separation")


def add_arguments(parser) -> None:
    from bench.store import DEFAULT_STORE

    parser.add_argument("figure", choices=FIGURES, help="curves = paper Fig. 1, weights = paper Fig. 5, "
                                                        "separation = every method's trust of clean head, clean "
                                                        "tail and mislabelled samples in one cell")
    parser.add_argument("--run", help="the run's key (or a unique prefix of it)")
    parser.add_argument("--cell", help="DATASET:IMBALANCE:NOISE, e.g. fmnist-mini:10:flip2:0.4 (with --method)")
    parser.add_argument("--method", help="with --cell: method of the run to plot (default curvenet; separation: "
                                         "comma-separated methods, default all; registry names or the names "
                                         "tables show)")
    from bench.spec import PRESETS

    parser.add_argument("--preset", choices=tuple(PRESETS), help="only runs of this preset")
    parser.add_argument("--seed", type=int, help="training seed (default: the lowest stored)")
    parser.add_argument("--store", default=DEFAULT_STORE, help=f"results store to read (default ./{DEFAULT_STORE})")
    parser.add_argument("--out", help="figure file: .png, .pdf, .svg ... (no suffix: .png; default "
                                      "figures/<figure>_<key>.png)")
    parser.add_argument("--classes", help="curves: the two classes to show, HEAD,TAIL (default: most and "
                                          "fewest training samples among the classes holding both clean "
                                          "and noisy samples)")


def parse_cell(text: str):
    """``DATASET:IMBALANCE:NOISE`` -> bench.spec.Cell (NOISE = none, real or TYPE:RATE). Read from
    the right, since an ``npz:PATH`` dataset has colons of its own."""
    from bench.spec import Cell

    text = text.strip()
    bare = next((kind for kind in ("none", "real") if text.endswith(":" + kind)), None)  # noise without a rate
    try:
        if bare:
            (dataset, imbalance), kind, rate = text[: -len(bare) - 1].rsplit(":", 1), bare, 0.0
        else:
            dataset, imbalance, kind, rate = text.rsplit(":", 3)
        if dataset and (":" not in dataset or dataset.startswith("npz:")):
            return Cell(_dataset_name(dataset, text), float(imbalance), kind, float(rate))
    except ValueError:  # too few parts, or an imbalance or rate that is no number
        pass
    raise BenchError(f"malformed --cell {text!r}; expected DATASET:IMBALANCE:NOISE, e.g. fmnist-mini:10:flip2:0.4, "
                     "cifar10:50:none or npz:mine.npz:1:real")


def _dataset_name(dataset: str, text: str) -> str:
    """A cell's dataset: a built-in name (case aside) or ``npz:PATH``; else a BenchError."""
    from bench.data.datasets import DATASET_NAMES

    if dataset.startswith("npz:") or dataset in DATASET_NAMES:
        return dataset
    if dataset.lower() in DATASET_NAMES:
        return dataset.lower()
    raise BenchError(f"--cell {text!r}: unknown dataset {dataset!r}; the datasets are {', '.join(DATASET_NAMES)}, "
                     "or npz:PATH")


def matches_cell(runs: pd.DataFrame, cell) -> pd.Series:
    """Which of the stored ``runs`` are on ``cell`` (a bench.spec.Cell); without noise, any type
    with rate 0 but real noise."""
    return ((runs["dataset"] == cell.dataset) & np.isclose(runs["imbalance"], cell.imbalance)
            & np.isclose(runs["noise_rate"], cell.noise_rate)
            & same_noise(runs["noise_type"], cell.noise_type, cell.noise_rate))


def select_run(store, *, run: str | None = None, cell=None, method: str = "curvenet", preset: str | None = None,
               seed: int | None = None) -> pd.Series:
    """The one stored (done) run to plot: by key prefix, or by method + cell (+ preset, seed)."""
    if run:
        key = store.resolve_key(run)
        rows = store.runs(None, keys=[key])
        if rows.loc[0, "status"] != "done":
            raise BenchError(f"run {key} is {rows.loc[0, 'status']}, not done")
        return rows.iloc[0]
    runs = store.runs("done")
    if runs.empty:
        raise BenchError(f"no finished runs in {store.path}")
    from bench.show import method_selection, select

    named = method_selection(method, runs)  # a registry name, or the name tables show (a variant: its runs)
    if len(named) != 1:
        raise BenchError(f"--method names one method here (a figure of one run), got {method!r}")
    m = select(runs, methods=named)
    method = next(iter(named))
    if cell is not None:
        m &= matches_cell(runs, cell)
    if preset:
        m &= runs["preset"] == preset
    if seed is not None:
        m &= runs["seed"] == seed
    found = runs[m]
    if found.empty:
        where = "".join([f" on {cell.label()}" if cell is not None else "", f" with preset {preset}" if preset else "",
                         f" with seed {seed}" if seed is not None else ""])
        stored = sorted(set(runs["method"]))
        if method not in stored:
            hint = f"its finished runs are of {', '.join(stored)}"
        else:
            mine = sorted({f"{cell_label(r)}, preset {r['preset']}, seed {r['seed']}"
                           for _, r in runs[runs["method"] == method].iterrows()})
            hint = f"its {method} runs: {'; '.join(mine)}; or train one with `python -m bench run --methods {method}`"
        raise BenchError(f"no finished {method} run{where} in {store.path} ({hint})")
    configs = {json.dumps({k: v for k, v in json.loads(s).items() if k not in ("seed", "data_seed")}, sort_keys=True)
               for s in found["spec_json"]}
    if len(configs) > 1:
        keys = ", ".join(k[:12] for k in found["key"])
        raise BenchError(f"{len(found)} runs of {len(configs)} different configurations match; pick one with "
                         f"--run KEY ({keys})")
    return found.sort_values(["seed", "started"]).iloc[0]


def _train_counts(run: pd.Series, samples: pd.DataFrame) -> np.ndarray:
    counts = run.get("train_counts") if hasattr(run, "get") else None
    if isinstance(counts, (list, np.ndarray)) and len(counts):
        return np.asarray(counts)
    k = int(max(samples["clean_label"].max(), samples["observed_label"].max())) + 1
    return np.bincount(samples["clean_label"], minlength=k)


def load_curves(store, key: str, n_samples: int) -> tuple[np.ndarray, str]:
    """(N, T) per-sample curves of the run and which kind they are ("raw probe loss" or
    "normalised curve")."""
    for names, kind in ((RAW_CURVE_ARRAYS, "raw probe loss"), (NORMALISED_CURVE_ARRAYS, "normalised curve")):
        for name in names:
            try:
                arr = np.asarray(store.array(key, name), dtype=float)
            except KeyError:
                continue
            if arr.ndim != 2:
                continue
            if arr.shape[0] != n_samples and arr.shape[1] == n_samples:
                arr = arr.T
            if arr.shape[0] == n_samples:
                return arr, f"{kind} (array '{name}')"
    names = ", ".join(RAW_CURVE_ARRAYS + NORMALISED_CURVE_ARRAYS)
    raise BenchError(f"run {key} stored no per-sample loss curves (arrays {names}); "
                     "plot a CurveNet run")


def _title(run: pd.Series) -> str:
    noise = noise_text(run["noise_type"], run["noise_rate"], sep=" ")
    return (f"{run['display_name']} — {run['dataset']}, imbalance {run['imbalance']:g}, {noise} "
            f"({run['preset']} preset, {run['model']}, seed {run['seed']}, run {run['key'][:12]})")


def head_and_tail(samples: pd.DataFrame, counts: np.ndarray) -> tuple[int, int]:
    """The classes with the most and the fewest training samples among those whose observed label
    holds both clean and noisy samples (all classes when none does, e.g. without noise); ties go
    to the first class for the head and the last for the tail, so that a balanced cell shows two
    classes, not one twice."""
    obs, noisy = samples["observed_label"].to_numpy(), samples["is_noisy"].to_numpy()
    both = [c for c in range(len(counts)) if (noisy[obs == c]).any() and (~noisy[obs == c]).any()]
    pool = both if len(both) >= 2 else list(range(len(counts)))
    return max(pool, key=lambda c: counts[c]), min(reversed(pool), key=lambda c: counts[c])


def curve_groups(samples: pd.DataFrame, curves: np.ndarray, cls: int) -> dict[str, np.ndarray]:
    """Per-epoch mean and std of the curves of clean and of noisy samples whose observed label is
    ``cls``; counts too."""
    out = {}
    for name, noisy in (("clean", False), ("noisy", True)):
        mask = (samples["observed_label"].to_numpy() == cls) & (samples["is_noisy"].to_numpy() == noisy)
        sel = curves[mask]
        out[name] = {"n": int(mask.sum()), "mean": sel.mean(0) if len(sel) else None,
                     "std": sel.std(0) if len(sel) else None}
    return out


def plot_curves(store, run: pd.Series, out: Path, classes: tuple[int, int] | None = None) -> Path:
    """Fig. 1: clean vs noisy probe-loss curves (mean ± std) of a head and a tail class."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = run["key"]
    samples = store.samples(key)
    curves, kind = load_curves(store, key, len(samples))
    counts = _train_counts(run, samples)
    head, tail = classes if classes else head_and_tail(samples, counts)
    if not (0 <= head < len(counts) and 0 <= tail < len(counts)):
        raise BenchError(f"--classes {head},{tail}: class indices lie in 0..{len(counts) - 1} for {run['dataset']}")
    offset = 0
    if kind.startswith("normalised"):  # the stored window starts at probe epoch S = drop_first
        offset = int(json.loads(run["spec_json"]).get("params", {}).get("drop_first", 0))
    epochs = offset + np.arange(curves.shape[1])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    roles = ("head class", "tail class") if counts[head] != counts[tail] else ("class", "class")  # balanced
    for ax, cls, role in zip(axes, (head, tail), roles):
        groups = curve_groups(samples, curves, cls)
        for name, color in (("clean", "tab:blue"), ("noisy", "tab:red")):
            g = groups[name]
            if g["n"] == 0:
                continue
            ax.plot(epochs, g["mean"], color=color, label=f"{name} (n={g['n']})")
            ax.fill_between(epochs, g["mean"] - g["std"], g["mean"] + g["std"], color=color, alpha=0.2)
        if groups["noisy"]["n"] == 0:
            ax.text(0.5, 0.95, "no noisy samples with this label", transform=ax.transAxes, ha="center", va="top")
        ax.set_title(f"{role} {cls} ({int(counts[cls])} training samples with that clean label)")
        ax.set_xlabel("probe epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(kind.split(" (")[0])
    fig.suptitle(f"Fig. 1: {kind}, mean ± std over samples, by observed label\n{_title(run)}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out, dpi=110)


def weight_groups(samples: pd.DataFrame) -> list[dict]:
    """Per observed class: the weights of its clean and of its noisy samples, and how many of each
    have no weight (NaN: left out of the boxes, as the separation figure leaves them out)."""
    if "weight" not in samples.columns or samples["weight"].isna().all():
        raise BenchError("the run stored no per-sample 'weight' (MW-Net and CurveNet record their weighting "
                         "network's, Class-Balanced and LDAM-DRW their classes' weights; see `bench show KEY`)")
    out = []
    obs, noisy, w = samples["observed_label"].to_numpy(), samples["is_noisy"].to_numpy(), samples["weight"].to_numpy()
    known = ~np.isnan(w.astype(float))
    for cls in range(int(obs.max()) + 1):
        m = obs == cls
        out.append({"class": cls, "clean": w[m & ~noisy & known], "noisy": w[m & noisy & known],
                    "missing": int((m & ~known).sum())})
    return out


def plot_weights(store, run: pd.Series, out: Path) -> Path:
    """Fig. 5: weights of clean vs noisy samples for every class (box plots)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = run["key"]
    samples = store.samples(key)
    groups = weight_groups(samples)
    k = len(groups)
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * k + 3), 4.8))
    for offset, name, color in ((-0.2, "clean", "tab:blue"), (0.2, "noisy", "tab:red")):
        data = [g[name] for g in groups]
        pos = [g["class"] + offset for g, d in zip(groups, data) if len(d)]
        data = [d for d in data if len(d)]
        if not data:
            continue
        bp = ax.boxplot(data, positions=pos, widths=0.35, patch_artist=True, showfliers=False,
                        medianprops={"color": "black"})
        for patch in bp["boxes"]:
            patch.set_facecolor(color)
            patch.set_alpha(0.5)
        ax.plot([], [], color=color, lw=8, alpha=0.5, label=f"{name} (n={sum(len(g[name]) for g in groups)})")
    ax.set_xticks(range(k))
    ax.set_xticklabels([f"{g['class']}\n{len(g['clean'])} / {len(g['noisy'])}" for g in groups])
    missing = sum(g["missing"] for g in groups)
    ax.set_xlabel("observed class (clean / noisy training samples with that label"
                  + (f"; {missing} without a weight left out)" if missing else ")"))
    ax.set_ylabel("final sample weight")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    ax.set_title(f"Fig. 5: weights of clean vs noisy samples per class (box: quartiles, whiskers 1.5 IQR)\n"
                 f"{_title(run)}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out, dpi=110)


SEPARATION_GROUPS = (("clean, head", "tab:blue"), ("clean, tail", "tab:green"), ("mislabelled", "tab:red"))


def separation_panels(store, runs: pd.DataFrame, seed: int | None = None) -> list[dict]:
    """One panel per method row (``summary.row_labels`` of ``runs``, one cell's done runs) whose
    run records a trust: its run (``seed``, else the row's lowest seed), the record, the trust of
    each of :data:`SEPARATION_GROUPS` and its ``bench.analysis.separation``."""
    from bench.analysis import run_trust, separation
    from bench.summary import row_labels

    runs = runs.assign(label=row_labels(runs)).sort_values(["label", "seed", "started"])
    if seed is not None:
        runs = runs[runs["seed"] == seed]
    panels = []
    for label, rows in runs.groupby("label", sort=True):
        run = rows.iloc[0]
        found = run_trust(store, run["key"])
        if found is None:
            continue
        name, df, trust = found
        sep = separation(df["clean_label"], df["is_noisy"], trust)
        clean = ~df["is_noisy"].to_numpy()
        tail = np.isin(df["clean_label"].to_numpy(), sep["tail"])
        groups = dict(zip((g for g, _ in SEPARATION_GROUPS), (trust[clean & ~tail], trust[clean & tail],
                                                              trust[~clean])))
        panels.append({"label": label, "run": run, "record": name,
                       "groups": {g: v[~np.isnan(v)] for g, v in groups.items()}, "separation": sep})
    return panels


def _auroc_text(value: float) -> str:
    return "—" if value != value else f"{value:.1f}"


def plot_separation(panels: list[dict], out: Path, title: str) -> Path:
    """Box plots of each panel's trust per group (:func:`separation_panels`), one axis per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(max(2.6 * len(panels) + 1, 8), 4.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        shown = [(g, color) for g, color in SEPARATION_GROUPS if len(panel["groups"][g])]
        bp = ax.boxplot([panel["groups"][g] for g, _ in shown], widths=0.6, patch_artist=True, showfliers=False,
                        medianprops={"color": "black"})
        for patch, (_, color) in zip(bp["boxes"], shown):
            patch.set_facecolor(color)
            patch.set_alpha(0.5)
        sep = panel["separation"]
        no_tail = "tail" in sep and not len(sep["tail"])  # a balanced cell: every clean sample is "clean"
        names = {g: "clean" if g == "clean, head" and no_tail else g for g, _ in shown}
        ax.set_xticks(range(1, len(shown) + 1))
        ax.set_xticklabels([f"{names[g]}\n{len(panel['groups'][g])}" for g, _ in shown], fontsize=8)
        label = textwrap.fill(panel["label"], 26, break_on_hyphens=False)  # "CE [data_sha256=...]" fits its panel
        ax.set_title(f"{label}\nnoise {_auroc_text(sep['noise_auroc'])} · tail "
                     f"{_auroc_text(sep['tail_auroc'])}", fontsize=9)
        ax.set_ylabel("final weight" if panel["record"] == "weight" else "− selection score", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out, dpi=110)


def cell_argument(run) -> str:
    """A run's cell as ``--cell`` takes it: ``DATASET:IMBALANCE:NOISE``."""
    noise = noise_text(run["noise_type"], run["noise_rate"], clean="none")
    return f"{run['dataset']}:{number_text(run['imbalance'])}:{noise}"


def _plot_separation(store, args) -> int:
    """``bench plot separation``: the cell's runs (one cell; --cell where the store holds several)."""
    from bench.analysis import TRUST_KEEPERS
    from bench.show import absent_methods, method_selection, select

    if args.run or args.classes:
        raise BenchError("separation shows every method of a cell: drop --run/--classes, give --cell")
    runs = store.runs("done")
    wanted = method_selection(args.method, runs)
    if wanted:
        absent = absent_methods(wanted, runs, store.path)
        if absent:
            raise BenchError(absent.replace("no runs of", "no finished runs of", 1))
        runs = runs[select(runs, methods=wanted)]
    if args.preset:
        runs = runs[runs["preset"] == args.preset]
    if args.cell:
        runs = runs[matches_cell(runs, parse_cell(args.cell))]
        if runs.empty:
            raise BenchError(f"no finished runs on --cell {args.cell} in {store.path}"
                             f"{' (with --method/--preset as given)' if args.method or args.preset else ''}")
    ordered = runs.sort_values(["dataset", "imbalance", "noise_rate", "noise_type", "preset", "model"])
    cells = list(dict.fromkeys(cell_argument(r) for _, r in ordered.iterrows()))
    if len(cells) > 1:
        raise BenchError(f"the runs are on {len(cells)} cells; pick one with --cell: {', '.join(cells)}")
    protocols = list(dict.fromkeys(f"preset {r['preset']}, model {r['model']}" for _, r in ordered.iterrows()))
    if len(protocols) > 1:  # the same method under two protocols would share a label, one panel
        raise BenchError(f"the cell's runs are of {len(protocols)} protocols ({'; '.join(protocols)}); pick one "
                         "with --preset (or --method)")
    panels = separation_panels(store, runs, args.seed) if len(runs) else []
    if not panels and len(runs) and not any(store.has_samples(key) for key in runs["key"]):
        raise BenchError(f"the {len(runs)} finished run(s){' on ' + cells[0] if cells else ''} have no per-sample "
                         f"rows in {store.path} ({RUNS_ONLY}); plot them from the store they were trained into")
    if not panels:
        raise BenchError(f"no finished run{' on ' + cells[0] if cells else ''}"
                         f"{' of seed ' + str(args.seed) if args.seed is not None else ''} records a per-sample "
                         f"weight or selection score ({TRUST_KEEPERS} do)")
    first = panels[0]["run"]
    seeds = sorted({int(p["run"]["seed"]) for p in panels})
    noise = noise_text(first["noise_type"], first["noise_rate"], sep=" ")
    title = (f"Trust of clean head, clean tail and mislabelled training samples (box: quartiles, whiskers 1.5 IQR; "
             f"AUROCs in %)\n{first['dataset']}, imbalance {first['imbalance']:g}, {noise} "
             f"({first['preset']} preset, seed {', '.join(map(str, seeds))})")
    name = f"separation_{re.sub(r'[^A-Za-z0-9.+-]+', '_', cell_argument(first))}_seed{seeds[0]}.png"
    path = plot_separation(panels, Path(args.out) if args.out else Path("figures") / name, title)
    print(path)
    print(f"{len(panels)} runs: " + ", ".join(f"{p['label']} {p['run']['key'][:12]}" for p in panels), file=sys.stderr)
    return 0


def check_out(out: str | None, option: str = "--out") -> str | None:
    """``option``'s value as the file to write, checked before anything is drawn: its suffix must be
    a format matplotlib writes (png, pdf, svg ...); without one, ``.png`` is added (so the path
    printed is the file written); not a folder, and somewhere a file can be created (the nearest
    existing folder above it writable). None: not given."""
    if out is None:
        return None
    if not out.strip():
        raise BenchError(f"{option} needs a file name, e.g. {option} figures/fig.png")
    if out.endswith(("/", os.sep)) or Path(out).is_dir():
        raise BenchError(f"{option} {out}: is a folder; give a file name in it, e.g. {Path(out) / 'fig.png'}")
    suffix = Path(out).suffix.lstrip(".").lower()
    if suffix:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        formats = FigureCanvasAgg(Figure()).get_supported_filetypes()
        if suffix not in formats:
            raise BenchError(f"{option} {out}: matplotlib cannot write .{suffix} files; use one of "
                             + ", ".join(f".{f}" for f in sorted(formats)))
    else:
        out += ".png"
    check_creatable(Path(out).absolute().parent, f"{option} {out}")  # the folder it goes in
    return out


def save_figure(fig, out: Path, **savefig_options) -> Path:
    """Write ``fig`` to ``out`` (creating its folder) and close it; a file system error (a read-only
    mount, a full disk) is a one-line BenchError rather than a traceback."""
    import matplotlib.pyplot as plt

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, **savefig_options)
    except OSError as exc:
        raise BenchError(f"cannot write the figure {out}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return out


def main(args) -> int:
    from bench.store import Store

    args.out = check_out(args.out)
    if args.seed is not None and args.seed < 0:
        raise BenchError(f"--seed must be 0 or more, got {args.seed}")
    if args.figure == "weights" and args.classes:
        raise BenchError("--classes picks the curves figure's two classes; the weights figure shows every class")
    if args.figure == "separation":
        store = Store(args.store, create=False)
        try:
            return _plot_separation(store, args)
        finally:
            store.close()

    if args.run:  # one run, by key: an option that would pick another is a mistake, not ignored
        chosen = [name for name, value in (("--cell", args.cell), ("--method", args.method),
                                           ("--preset", args.preset), ("--seed", args.seed)) if value is not None]
        if chosen:
            raise BenchError(f"--run picks one run by its key; drop {', '.join(chosen)} (or pick by --cell)")
    store = Store(args.store, create=False)
    cell = parse_cell(args.cell) if args.cell else None
    run = select_run(store, run=args.run, cell=cell, method=args.method or "curvenet", preset=args.preset,
                     seed=args.seed)
    if not store.has_samples(run["key"]):
        raise BenchError(f"run {run['key'][:12]} has no per-sample rows in {store.path} ({RUNS_ONLY}); plot it "
                         "from the store it was trained into")
    out = Path(args.out) if args.out else Path("figures") / f"{args.figure}_{run['key'][:12]}.png"
    if args.figure == "curves":
        classes = None
        if args.classes:
            try:
                head, tail = (int(t) for t in args.classes.split(","))
            except ValueError:
                raise BenchError(f"--classes must be HEAD,TAIL (two class indices), got {args.classes!r}") from None
            if head == tail:
                raise BenchError(f"--classes needs two different classes, got {args.classes!r}")
            classes = (head, tail)
        path = plot_curves(store, run, out, classes)
    else:
        path = plot_weights(store, run, out)
    print(path)
    print(f"run {run['key']} ({run['display_name']}, {run['dataset']}, seed {run['seed']})", file=sys.stderr)
    store.close()
    return 0
