"""What the CurveNet paper's tables are: their layouts (rows and columns), the numbers the papers
publish (``tables/reference/*.csv``), and the runs each table needs (``bench run --paper N``).

bench/tables.py fills these layouts from the store; this module knows nothing of the store and
imports no torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.data.bias import noise_text
from bench.errors import BenchError
from bench.spec import GRIDS, Cell

PAPER_TABLES = ("1", "2", "3", "6", "7", "8", "9", "10")
ALL_TABLES = PAPER_TABLES + ("anchors",)

# CurveNet hyperparameter names (methods/curvenet.py) that the ablation tables vary, with the
# paper's defaults (PROTOCOL.md §5): skip layers SL, embedding size P, dropped leading epochs S.
CURVENET_DEFAULTS = {"skip_layers": 0, "embed_dim": 64, "drop_first": 5, "drw": False, "meta_set": "clean"}

# The cell the ablation tables (6-10) are run on: the CurveNet code's default configuration
# (config/cycle/cifar10_unif/train_c0.4_imb0.05.yaml: CIFAR-10, imbalance 20, noise 0.4), with the
# paper's flip2 noise. OUR ASSUMPTION: our sources do not state the ablations' data.
ABLATION_CELL = GRIDS["ablation"][0]


# ------------------------------------------------------------------------------ reference data

def reference_dir() -> Path:
    """``tables/reference`` of the checkout (or of the working directory, or $BENCH_REFERENCE_DIR)."""
    candidates = [os.environ.get("BENCH_REFERENCE_DIR"),
                  Path(__file__).resolve().parent.parent / "tables" / "reference", Path.cwd() / "tables" / "reference"]
    for c in candidates:
        if c and Path(c).is_dir() and any(Path(c).glob("*.csv")):
            return Path(c)
    raise BenchError("cannot find tables/reference/*.csv (the published numbers); run from the repository "
                     "checkout or set BENCH_REFERENCE_DIR")


def load_reference(directory: Path | None = None) -> pd.DataFrame:
    """All published numbers, one row each (columns paper, table, dataset, imbalance, noise_type,
    noise_rate, method, value, metric, setting, backbone, paper_label, source, file)."""
    directory = directory or reference_dir()
    frames = []
    for path in sorted(directory.glob("*.csv")):
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        df["file"] = f"tables/reference/{path.name}"
        frames.append(df)
    ref = pd.concat(frames, ignore_index=True)
    ref["value"] = ref["value"].astype(float)
    return ref


def _num(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def published(ref: pd.DataFrame, table: str, method: str, *, cell: Cell | None = None, dataset: str | None = None,
              metric: str | None = "acc", setting: str = "", paper: str = "curvenet_aaai2022") -> dict | None:
    """The published value for one entry, with its source; None if the reference has none."""
    rows = ref[(ref["paper"] == paper) & (ref["table"] == str(table)) & (ref["method"] == method)]
    if metric is not None:
        rows = rows[rows["metric"] == metric]
    if setting:
        rows = rows[rows["setting"] == setting]
    if dataset is not None:
        rows = rows[rows["dataset"] == dataset]
    if cell is not None:
        rows = rows[(rows["dataset"] == cell.dataset)
                    & (rows["imbalance"].map(_num) == cell.imbalance)
                    & (rows["noise_rate"].map(_num) == cell.noise_rate)]
        if cell.noise_rate > 0:
            rows = rows[rows["noise_type"] == cell.noise_type]
    if len(rows) == 0:
        return None
    if len(rows) > 1:
        raise BenchError(f"reference data hold {len(rows)} values for table {table}, {method}, {cell or dataset}")
    r = rows.iloc[0]
    return {"value": float(r["value"]), "source": f"{r['file']} ({r['source']})"}


# ------------------------------------------------------------------------------ table layouts

@dataclass(frozen=True)
class Row:
    """One row of a paper table: which stored runs it shows and which published number it faces."""

    label: str                            # as the paper prints it
    method: str | None                    # registry name; None = a method the suite does not run (HAR)
    display: str | None = None            # required display_name (the name the method gives its config)
    where: tuple = ()                     # strict hyperparameter values ((name, value), ...)
    sets: tuple = ()                      # what `bench run --paper N` passes as --set for this row
    model: str = "resnet32"
    meta_per_class: int | None = None     # None = the dataset's default (PROTOCOL.md §1)
    ref_method: str | None = None         # method name in the reference CSV (default: label)
    ref_setting: str = ""                 # setting column in the reference CSV (Table 8: SL=k)

    @property
    def reference_name(self) -> str:
        return self.ref_method or self.label


@dataclass(frozen=True)
class Column:
    label: str
    cell: Cell


@dataclass(frozen=True)
class GridColumn:
    """Table 1: the mean accuracy MA over a whole grid of one dataset."""

    label: str
    dataset: str
    cells: tuple


@dataclass(frozen=True)
class PaperTable:
    number: str
    title: str
    rows: tuple
    columns: tuple
    kind: str = "cells"                   # cells | grid | ablation
    preset: str = "paper"
    notes: tuple = ()
    ref_table: str | None = None          # table id in the reference CSV (default: number)
    transcribed: bool = True


def cell_title(c: Cell) -> str:
    return f"imb {c.imbalance:g}, {noise_text(c.noise_type, c.noise_rate, sep=' ')}"


def _mwnet(variant: str, **kw) -> Row:
    return Row(f"MW-Net({variant})", "mwnet", display=f"MW-Net({variant})", where=(("variant", variant),),
               sets=(f"mwnet.variant={variant}",), **kw)


def _curvenet(label: str = "CurveNet", model: str = "resnet32", meta_per_class: int | None = None,
              ref_setting: str = "", **changes) -> Row:
    params = {**CURVENET_DEFAULTS, **changes}
    sets = tuple(f"curvenet.{k}={_set_text(v)}" for k, v in changes.items() if CURVENET_DEFAULTS.get(k) != v)
    return Row(label, "curvenet", where=tuple(sorted(params.items())), sets=sets, model=model,
               meta_per_class=meta_per_class, ref_method="CurveNet", ref_setting=ref_setting)


def _set_text(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


TABLE1_ROWS = (
    Row("CE", "ce"),
    Row("Class-Balanced", "cb", display="Class-Balanced"),
    Row("Focal", "focal", display="Focal"),
    Row("LDAM-DRW", "ldam_drw", display="LDAM-DRW"),
    Row("Co-teaching", "coteaching", display="Co-teaching"),
    Row("O2U-Net", "o2u", display="O2U-Net"),
    _mwnet("noise"),
    _mwnet("imb"),
    Row("HAR", None),
    _curvenet(),
)
MAIN_ROWS = (_mwnet("imb"), _mwnet("noise"), _curvenet())
ABLATION_NOTE = (f"Ablation data (our assumption; the paper's text in our sources does not state it): "
                 f"{ABLATION_CELL.label()}, the CurveNet code's default configuration "
                 "(config/cycle/cifar10_unif/train_c0.4_imb0.05.yaml) with the paper's flip2 noise.")
NOT_TRANSCRIBED_NOTE = ("Published values not transcribed: PROTOCOL.md does not hold this table's numbers and no "
                        "trustworthy copy of the paper's table was reachable here (see tables/reference/README.md). "
                        "The layout is our reading of PROTOCOL.md §5.")


TABLES: dict[str, PaperTable] = {
    "1": PaperTable(
        "1", "Mean accuracy (MA, %) over the whole noise x imbalance grid, ResNet-32", TABLE1_ROWS,
        (GridColumn("CIFAR-10", "cifar10", tuple(GRIDS["cifar10"])),
         GridColumn("CIFAR-100", "cifar100", tuple(GRIDS["cifar100"]))),
        kind="grid",
        notes=("MA = mean over the grid's cells of the test accuracy; CIFAR-10 grid: imbalance 1, 10, 20, 50, 100, "
               "200 x flip2 noise 0, 0.2, 0.4 (18 cells); CIFAR-100 grid: imbalance 1, 10, 20 x uniform noise 0, 0.2, "
               "0.4, 0.6 (12 cells). Ours: MA of each seed whose runs cover every cell, then mean ± std over those "
               "seeds (n). A grid with a missing cell gets no MA.",
               "HAR is in the paper's Table 1 but not implemented in this suite: its published numbers are shown, "
               "marked 'not run'.")),
    "2": PaperTable(
        "2", "CIFAR-10 test accuracy (%): long-tailed without noise, and noisy without imbalance, ResNet-32",
        MAIN_ROWS, tuple(Column(cell_title(c), c) for c in GRIDS["table2"])),
    "3": PaperTable(
        "3", "CIFAR-100 test accuracy (%) under imbalance and uniform noise, ResNet-32",
        MAIN_ROWS, tuple(Column(cell_title(c), c) for c in GRIDS["table3"])),
    "6": PaperTable(
        "6", "CurveNet with another backbone (WRN-16-8) and with DRW",
        (_curvenet("CurveNet, ResNet-32"), _curvenet("CurveNet, WRN-16-8", model="wrn16_8"),
         _curvenet("CurveNet + DRW, ResNet-32", drw=True, drw_counts="clean"),
         _curvenet("CurveNet + DRW, WRN-16-8", model="wrn16_8", drw=True, drw_counts="clean")),
        (Column(cell_title(ABLATION_CELL), ABLATION_CELL),), kind="ablation",
        notes=(ABLATION_NOTE, "+DRW: class-balanced weights from the clean per-class counts, as the official "
               "code computes them (oracle information; `--set curvenet.drw_counts=observed`, the default "
               "outside this table, uses the observed labels' counts).", NOT_TRANSCRIBED_NOTE),
        transcribed=False),
    "7": PaperTable(
        "7", "CurveNet with meta sets of different sizes (clean samples per class) and a pseudo-meta set",
        tuple(_curvenet(f"{m} per class", meta_per_class=m) for m in (0, 10, 20, 50, 80, 100))
        + (_curvenet("0 per class, pseudo-meta (10 lowest probe-loss samples per class)", meta_per_class=0,
                     meta_set="pseudo"),),
        (Column(cell_title(ABLATION_CELL), ABLATION_CELL),), kind="ablation",
        notes=(ABLATION_NOTE, "0 per class: no meta set, so CurveNet is never updated and every sample keeps "
               "its initial weight (about 1.009): CE on the pool. Pseudo-meta: the meta set is the 10 lowest "
               "probe-loss training samples per class, with their observed labels (PROTOCOL.md §5 lists both).",
               NOT_TRANSCRIBED_NOTE),
        transcribed=False),
    "8": PaperTable(
        "8", "Skip-layer meta optimisation (SLMO): accuracy and meta time per SL",
        tuple(_curvenet(f"SL={k}", ref_setting=f"SL={k}", skip_layers=k) for k in range(4)),
        (Column(cell_title(ABLATION_CELL), ABLATION_CELL),), kind="ablation",
        notes=(ABLATION_NOTE,
               "The paper reports MA; the grid behind its MA is not stated in our sources, so Δ compares our "
               "accuracy on the ablation cell with that MA (indicative only).",
               "Time: the paper's 'meta time' in ms per iteration (meta backward + CurveNet Adam step + sync; "
               "notes/curvenet_mwnet.md §4) on the authors' GPU. Ours is measured by `python -m bench timing` "
               "(same code paths as training); the store holds no timings unless a run logged `meta_ms`.")),
    "9": PaperTable(
        "9", "CurveNet embedding size P",
        tuple(_curvenet(f"P={p}", embed_dim=p) for p in (32, 64, 96)),
        (Column(cell_title(ABLATION_CELL), ABLATION_CELL),), kind="ablation",
        notes=(ABLATION_NOTE, NOT_TRANSCRIBED_NOTE), transcribed=False),
    "10": PaperTable(
        "10", "CurveNet input: leading probe epochs dropped S",
        tuple(_curvenet(f"S={s}", drop_first=s) for s in (5, 30, 60)),
        (Column(cell_title(ABLATION_CELL), ABLATION_CELL),), kind="ablation",
        notes=(ABLATION_NOTE, NOT_TRANSCRIBED_NOTE), transcribed=False),
    "anchors": PaperTable(
        "anchors", "long-tailed CIFAR without noise, against the MW-Net and LDAM-DRW papers",
        (Row("CE", "ce", meta_per_class=10), Row("Focal", "focal", display="Focal", meta_per_class=10),
         Row("Class-Balanced", "cb", display="Class-Balanced", meta_per_class=10),
         Row("LDAM-DRW", "ldam_drw", display="LDAM-DRW", meta_per_class=10),
         _mwnet("imb", meta_per_class=10)),
        tuple(Column(f"CIFAR-10 imb {i}", Cell("cifar10", float(i), "none", 0.0)) for i in (200, 100, 50, 20, 10, 1))
        + tuple(Column(f"CIFAR-100 imb {i}", Cell("cifar100", float(i), "none", 0.0)) for i in (100, 10)),
        notes=("Published: MW-Net paper's long-tailed ResNet-32 table (CE = its BaseModel; MW-Net = its long-tail "
               "configuration, our MW-Net(imb)) and LDAM-DRW's Table 2 (100 - error). Their protocols differ from "
               "ours (MW-Net: 100 epochs, batch 100, decays at 80/90; LDAM-DRW: 200 epochs, decays at 160/180, DRW "
               "at 160); ours run the suite's protocol (PROTOCOL.md §3) with 10 clean meta samples per class removed "
               "from the pool, as in MW-Net's long-tail code.",),),
}


def get_table(number) -> PaperTable:
    key = str(number).strip().lower()
    if key not in TABLES:
        raise BenchError(f"no paper table {number!r}; choose from {', '.join(ALL_TABLES)} or all")
    return TABLES[key]


def table_numbers(arg) -> list[str]:
    text = str(arg).strip().lower()
    if text == "all":
        return list(ALL_TABLES)
    out = [t.strip() for t in text.split(",") if t.strip()]
    for t in out:
        get_table(t)
    return out


# ------------------------------------------------------------------------------ run requests

def paper_requests(number) -> list[dict]:
    """The runs table ``number`` needs, for ``bench run --paper N`` / ``bench runs-for --paper N``.

    A list of requests ``{"methods", "cells", "set", "preset", "model", "meta_per_class"}``; rows
    that share everything but the method are merged into one request.
    """
    requests: list[dict] = []
    for n in table_numbers(number):
        t = get_table(n)
        cells = _table_cells(t)
        for row in t.rows:
            if row.method is None:
                continue
            req = {"methods": row.method, "cells": list(cells), "set": list(row.sets), "preset": t.preset,
                   "model": row.model}
            if row.meta_per_class is not None:
                req["meta_per_class"] = row.meta_per_class
            _merge(requests, req)
    return requests


def _table_cells(t: PaperTable) -> list[Cell]:
    cells = []
    for col in t.columns:
        cells.extend(col.cells if isinstance(col, GridColumn) else [col.cell])
    return list(dict.fromkeys(cells))


def _merge(requests: list[dict], req: dict) -> None:
    """Add ``req``'s method to a request that asks for the same runs otherwise (a --set names one
    method, so it does not touch the others), else append it."""
    for r in requests:
        if all(r.get(k) == req.get(k) for k in ("cells", "set", "preset", "model", "meta_per_class")):
            if req["methods"] not in r["methods"].split(","):
                r["methods"] += "," + req["methods"]
            return
    requests.append(req)
