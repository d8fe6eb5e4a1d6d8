"""Paper tables from the store: aggregation, missing cells, provenance, published numbers."""

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import paper_tables, tables
from bench.errors import BenchError
from bench.spec import GRIDS, Cell
from bench.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
import fake_store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = fake_store.build(tmp_path_factory.mktemp("tables") / "fake.sqlite")
    yield s
    s.close()


@pytest.fixture(scope="module")
def ref():
    return paper_tables.load_reference()


def entry(built, row, column):
    return [e for e in built.entries if e.row == row and e.column == column][0]


# ------------------------------------------------------------------ reference data

def test_reference_csvs_have_the_required_columns_and_sources():
    required = {"paper", "table", "dataset", "imbalance", "noise_type", "noise_rate", "method", "value", "source"}
    files = sorted((ROOT / "tables" / "reference").glob("*.csv"))
    assert {f.name for f in files} >= {"curvenet_aaai2022.csv", "mwnet_neurips2019.csv", "ldam_drw_neurips2019.csv"}
    for f in files:
        rows = list(csv.DictReader(f.open()))
        assert rows and required <= set(rows[0])
        for r in rows:
            assert r["source"].strip() and float(r["value"]) > 0


def test_reference_holds_protocol_section_6(ref):
    t1 = ref[(ref["paper"] == "curvenet_aaai2022") & (ref["table"] == "1")]
    assert len(t1) == 20
    assert paper_tables.published(ref, "1", "CurveNet", dataset="cifar10", metric="MA")["value"] == 75.70
    assert paper_tables.published(ref, "1", "HAR", dataset="cifar100", metric="MA")["value"] == 42.88
    assert paper_tables.published(ref, "2", "CurveNet", cell=Cell("cifar10", 200, "none", 0))["value"] == 65.91
    assert paper_tables.published(ref, "2", "MW-Net(noise)", cell=Cell("cifar10", 1, "flip2", 0.4))["value"] == 88.25
    assert paper_tables.published(ref, "3", "MW-Net(imb)", cell=Cell("cifar100", 20, "uniform", 0.6))["value"] == 22.35
    assert paper_tables.published(ref, "3", "CurveNet", cell=Cell("cifar100", 10, "uniform", 0.4))["value"] == 43.97
    assert [paper_tables.published(ref, "8", "CurveNet", metric="meta_ms", setting=f"SL={k}")["value"]
            for k in range(4)] == [239.94, 222.45, 65.44, 41.98]
    assert paper_tables.published(ref, "LT (ResNet-32)", "MW-Net(imb)", cell=Cell("cifar100", 100, "none", 0),
                            paper="mwnet_neurips2019")["value"] == 42.09
    assert paper_tables.published(ref, "2", "LDAM-DRW", cell=Cell("cifar10", 100, "none", 0),
                            paper="ldam_drw_neurips2019")["value"] == 77.03
    # tables whose numbers are not transcribed hold none
    assert ref[(ref["paper"] == "curvenet_aaai2022") & ref["table"].isin(["6", "7", "9", "10"])].empty


# ------------------------------------------------------------------ aggregation

def test_mean_std_and_seed_count(store, ref):
    built = tables.build(2, store.runs("done"), ref, "last")
    e = entry(built, "MW-Net(imb)", "imb 50, clean")
    assert e.ours.status == "ok" and e.ours.n == 3
    assert e.ours.mean == pytest.approx(12.0) and e.ours.std == pytest.approx(1.0)  # 11, 12, 13; ddof=1
    assert e.diff == pytest.approx(12.0 - 77.55)
    assert len(e.ours.keys) == 3
    e = entry(built, "CurveNet", "imb 1, flip2 0.4")  # 14, 16 -> the SL=2 run (19.5) is another config
    assert (e.ours.n, e.ours.mean) == (2, pytest.approx(15.0)) and e.ours.std == pytest.approx(np.sqrt(2))
    assert tables.ours_text(e.ours) == "15.00 ± 1.41 (n=2)"
    e = entry(built, "MW-Net(noise)", "imb 100, clean")
    assert tables.ours_text(e.ours) == "17.00 (n=1)"


def test_best_metric_reads_acc_best(store, ref):
    built = tables.build(2, store.runs("done"), ref, "best")
    assert entry(built, "MW-Net(imb)", "imb 50, clean").ours.mean == pytest.approx(17.0)  # 16, 17, 18
    text = tables.render(built, "md")
    assert "Metric: **best**" in text and "ours = mean ± sample std (ddof 1) over seeds" in text


def test_paper_tables_default_to_the_papers_best_epoch_and_the_plain_table_to_the_last(store, tmp_path):
    """The published numbers are best-epoch accuracies, so `--paper N` compares ours on the same
    footing unless told otherwise; the plain table shows the returned (last-epoch) model."""
    def cli(*args):
        out = subprocess.run([sys.executable, "-m", "bench", "table", "--store", str(store.path), *args],
                             cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def ours(args, row="MW-Net(imb)", column="imb 50, clean"):
        rows = list(csv.DictReader(cli("--paper", "2", "--format", "csv", *args).splitlines()))
        return float([r for r in rows if r["row"] == row and r["column"] == column][0]["ours_mean"])

    assert ours(()) == pytest.approx(17.0) and ours(("--metric", "last")) == pytest.approx(12.0)
    assert "Metric: **best**" in cli("--paper", "2")
    plain = [r for r in csv.DictReader(cli("--format", "csv").splitlines())
             if r["method"] == "MW-Net(imb)" and r["cell"].startswith("cifar10 imb50 clean")]
    assert len(plain) == 1 and (float(plain[0]["mean"]), float(plain[0]["std"]), plain[0]["n"]) == (12.0, 1.0, "3")


def test_missing_failed_and_other_preset_runs_are_missing_and_counted(store, ref):
    built = tables.build(2, store.runs("done"), ref, "last")  # told nothing of the failed runs
    assert entry(built, "MW-Net(noise)", "imb 200, clean").ours.status == "missing"  # failed run
    assert entry(built, "CurveNet", "imb 200, clean").ours.status == "missing"  # quick-preset run only
    c = tables.counts(built)
    assert c == {"entries": 18, "with_runs": 4, "missing_entries": 14, "failed_runs": 0}
    text = tables.render(built, "md")
    assert "**Missing:** 14 of 18 cells" in text and "**Failed:**" not in text
    assert text.count("| missing") + text.count("missing  ") >= 14


def test_a_cell_whose_runs_failed_says_failed_and_how_to_retry(store, ref):
    built = tables.build(2, store.runs("done"), ref, "last", failed=store.runs("failed"))
    e = entry(built, "MW-Net(noise)", "imb 200, clean")
    assert e.ours.status == "failed" and tables.ours_text(e.ours) == "failed"
    assert e.ours.failed == list(store.runs("failed")["key"])
    assert entry(built, "CurveNet", "imb 200, clean").ours.status == "missing"  # no run of this preset at all
    assert tables.counts(built) == {"entries": 18, "with_runs": 4, "missing_entries": 14, "failed_runs": 1}
    text = tables.render(built, "md", store_path="my.sqlite")
    assert "MW-Net(noise) / imb 200, clean (failed)" in text
    assert ("**Failed:** 1 of this table's runs failed" in text
            and "`python -m bench show --status failed --store my.sqlite`" in text
            and "`python -m bench runs-for --paper 2 --store my.sqlite --retry-failed`" in text)
    record = [r for r in tables.long_records(built) if r["row"] == "MW-Net(noise)" and r["column"] == "imb 200, clean"]
    assert record[0]["status"] == "failed" and record[0]["failed_run_keys"] == e.ours.failed[0]


def test_failed_seeds_are_left_out_and_counted_beside_the_mean(tmp_path, ref):
    """A cell's failed seed never enters its mean; the cell says so, as does Table 1's MA, which
    only averages seeds that finished every cell of the grid."""
    s = fake_store.build(tmp_path / "s.sqlite")
    lost = fake_store.add_run(s, fake_store.paper_spec("mwnet", "cifar10", 50, "none", 0, 3,
                                                       fake_store.MWNET_PARAMS["imb"]), "MW-Net(imb)", 0.0,
                              status="failed")
    # a failed run of another configuration (3 epochs) is not this configuration's loss
    fake_store.add_run(s, fake_store.paper_spec("mwnet", "cifar10", 50, "none", 0, 4, fake_store.MWNET_PARAMS["imb"],
                                                epochs=3, warmup_epochs=0, milestones=(1, 2)), "MW-Net(imb)", 0.0,
                       status="failed")
    built = tables.build(2, s.runs("done"), ref, "last", failed=s.runs("failed"))
    e = entry(built, "MW-Net(imb)", "imb 50, clean")
    assert (e.ours.status, e.ours.n, e.ours.failed) == ("ok", 3, [lost])
    assert tables.ours_text(e.ours) == "12.00 ± 1.00 (n=3, 1 failed)"
    assert tables.counts(built)["failed_runs"] == 2  # imb 50's seed 3, and imb 200's run
    out = subprocess.run([sys.executable, "-m", "bench", "table", "--store", str(s.path), "--paper", "2",
                          "--metric", "last"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "12.00 ± 1.00 (n=3, 1 failed)" in out.stdout and "**Failed:** 2 of this table's runs" in out.stdout
    # a cell whose finished run lacks the metric is missing it, not failed, even beside a failed run
    spec = fake_store.paper_spec("curvenet", "cifar10", 100, "none", 0, 0, fake_store.CURVENET_PARAMS)
    s.start(spec.key(), spec.to_dict(), "CurveNet")
    s.finish(spec.key(), metrics={"acc_last": 20.0}, env=fake_store.FAKE_ENV, history=[])
    fake_store.add_run(s, spec.replace(seed=1, data_seed=1), "CurveNet", 0.0, status="failed")
    e = entry(tables.build(2, s.runs("done"), ref, "best", failed=s.runs("failed")), "CurveNet", "imb 100, clean")
    assert (e.ours.status, e.ours.detail, len(e.ours.failed)) == ("missing", "no stored acc_best", 1)
    s.close()


def test_nonstandard_protocol_is_used_but_marked(store, ref):
    built = tables.build(2, store.runs("done"), ref, "last")
    e = entry(built, "MW-Net(imb)", "imb 1, flip2 0.2")
    assert e.ours.status == "ok" and "epochs=3" in e.ours.nonstandard
    assert tables.ours_text(e.ours) == "10.50 (n=1)†"
    assert "† not the runs `runs-for` trains" in tables.render(built, "md")


def test_two_nonstandard_configs_are_ambiguous(tmp_path, ref):
    s = Store(tmp_path / "s.sqlite")
    for epochs, acc in ((3, 20.0), (4, 30.0)):
        fake_store.add_run(s, fake_store.paper_spec("mwnet", "cifar10", 50, "none", 0, 0, {"variant": "imb"},
                                                    epochs=epochs), "MW-Net(imb)", acc)
    built = tables.build(2, s.runs("done"), ref)
    e = entry(built, "MW-Net(imb)", "imb 50, clean")
    assert e.ours.status == "ambiguous" and "epochs" in e.ours.detail and e.diff is None
    # a standard-protocol run resolves it
    fake_store.add_run(s, fake_store.paper_spec("mwnet", "cifar10", 50, "none", 0, 0, {"variant": "imb"}),
                       "MW-Net(imb)", 40.0)
    e = entry(tables.build(2, s.runs("done"), ref), "MW-Net(imb)", "imb 50, clean")
    assert (e.ours.status, e.ours.mean, e.ours.nonstandard) == ("ok", 40.0, "")


def test_no_published_number_is_ever_printed_as_ours(store, ref):
    published = {f"{v:.2f}" for v in ref["value"]}
    for n in paper_tables.ALL_TABLES:
        built = tables.build(n, store.runs("done"), ref, "last")
        for e in built.entries:
            text = tables.ours_text(e.ours)
            numbers = set(re.findall(r"\d+\.\d\d", text))
            assert not numbers & published, (n, e.row, e.column, text)
            if e.ours.status != "ok":
                assert not numbers, text
        for rec in tables.long_records(built):
            if rec["status"] != "ok":
                assert rec["ours_mean"] is None and rec["n_seeds"] == 0


def test_empty_store_prints_only_published_numbers_and_missing(ref):
    built = tables.build(3, pd.DataFrame(), ref, "last")
    assert all(e.ours.status == "missing" for e in built.entries)
    df = tables.layout(built)
    ours_cols = [c for c in df.columns if c.endswith("ours")]
    assert len(ours_cols) == 6 and (df[ours_cols] == "missing").all().all()
    assert df["imb 10, uniform 0.2: paper"].tolist() == ["49.71", "51.12", "51.93"]
    assert (df[[c for c in df.columns if c.endswith("Δ")]] == "").all().all()


# ------------------------------------------------------------------ Table 1 (MA over a grid)

def _grid_store(path, cells, seeds_per_cell, acc=lambda i, s: 10.0 + i + s):
    s = Store(path)
    for i, cell in enumerate(cells):
        for seed in seeds_per_cell(i):
            fake_store.add_run(s, fake_store.paper_spec("ce", cell.dataset, cell.imbalance, cell.noise_type,
                                                        cell.noise_rate, seed), "CE", acc(i, seed))
    return s


def test_ma_needs_every_cell_and_is_averaged_per_seed(tmp_path, ref):
    cells = GRIDS["cifar100"]
    # seeds 0 and 1 everywhere, seed 2 in all cells but the last
    s = _grid_store(tmp_path / "a.sqlite", cells, lambda i: (0, 1) if i == len(cells) - 1 else (0, 1, 2))
    built = tables.build(1, s.runs("done"), ref)
    e = entry(built, "CE", "CIFAR-100")
    per_seed = [np.mean([10.0 + i + seed for i in range(len(cells))]) for seed in (0, 1)]
    assert e.ours.status == "ok" and e.ours.n == 2
    assert e.ours.mean == pytest.approx(np.mean(per_seed)) and e.ours.std == pytest.approx(np.std(per_seed, ddof=1))
    assert e.diff == pytest.approx(e.ours.mean - 46.76)
    assert len(e.ours.keys) == 2 * len(cells)  # the MA's runs: seed 2 is left out (it misses a cell)
    assert entry(built, "CE", "CIFAR-10").ours.status == "missing"


def test_ma_is_not_printed_for_an_incomplete_grid(tmp_path, ref):
    cells = GRIDS["cifar100"]
    s = _grid_store(tmp_path / "b.sqlite", cells[:-1], lambda i: (0,))
    built = tables.build(1, s.runs("done"), ref)
    e = entry(built, "CE", "CIFAR-100")
    assert e.ours.status == "incomplete" and e.diff is None and e.ours.detail.startswith("11/12")
    row = tables.layout(built).set_index("method").loc["CE"]
    assert row["CIFAR-100: ours"] == "incomplete" and row["CIFAR-100: cells"] == "11/12 cells"
    partial_mean = f"{np.mean([10.0 + i for i in range(11)]):.2f}"
    assert partial_mean not in tables.render(built, "md").split("## Table 1 detail")[0]
    # seeds that never cover the whole grid together give no MA either
    s2 = _grid_store(tmp_path / "c.sqlite", cells, lambda i: (0,) if i % 2 else (1,))
    built2 = tables.build(1, s2.runs("done"), ref)
    e2 = entry(built2, "CE", "CIFAR-100")
    assert e2.ours.status == "incomplete" and "no seed covers" in e2.ours.detail
    assert tables.layout(built2).set_index("method").loc["CE", "CIFAR-100: cells"] == "12/12 cells"


def test_table1_csv_and_json_hold_the_per_cell_results_beside_the_grid_means(tmp_path, ref):
    """An incomplete grid has no MA, but its cells' numbers are in the machine-readable output as
    in the detail tables: ``record`` tells a grid mean from a cell."""
    cells = GRIDS["cifar100"]
    s = _grid_store(tmp_path / "d.sqlite", cells[:-1], lambda i: (0, 1))
    built = tables.build(1, s.runs("done"), ref, "last")
    rows = list(csv.DictReader(tables.render(built, "csv").splitlines()))
    assert len(rows) == 10 * 2 + 10 * 30  # 10 rows x 2 grids (MA), 10 rows x 30 cells
    ma = [r for r in rows if r["record"] == "grid mean"]
    assert len(ma) == 20 and {r["metric"] for r in ma} == {"MA of acc_last"}
    ce_ma = [r for r in ma if r["row"] == "CE" and r["column"] == "CIFAR-100"][0]
    assert ce_ma["status"] == "incomplete" and ce_ma["ours_mean"] == ""
    ce = [r for r in rows if r["record"] == "cell" and r["row"] == "CE" and r["dataset"] == "cifar100"]
    assert len(ce) == 12 and {r["metric"] for r in ce} == {"acc_last"}
    first = ce[0]
    assert first["column"] == "CIFAR-100: imb 1, clean" and (first["imbalance"], first["noise_rate"]) == ("1", "0")
    assert (float(first["ours_mean"]), float(first["ours_std"]), int(first["n_seeds"])) == (
        10.5, pytest.approx(np.std([10.0, 11.0], ddof=1), abs=1e-4), 2)
    assert first["published"] == "" and len(first["run_keys"].split()) == 2
    assert [r["status"] for r in ce].count("ok") == 11 and ce[-1]["status"] == "missing"
    assert len({(r["row"], r["column"]) for r in rows}) == len(rows)
    data = json.loads(tables.render(built, "json"))
    cell = [r for r in data["entries"] if r["record"] == "cell" and r["row"] == "CE"
            and r["column"] == "CIFAR-100: imb 1, clean"][0]
    assert (cell["ours_mean"], cell["n_seeds"], cell["published"]) == (10.5, 2, None)


def test_table1_describes_a_nonstandard_protocol_of_a_detail_cell(tmp_path, ref):
    """A † in Table 1's per-cell detail has its line under the table, also when its grid has no MA."""
    cells = GRIDS["cifar100"]
    s = _grid_store(tmp_path / "ns.sqlite", cells[:3], lambda i: (0,))
    c = cells[5]
    fake_store.add_run(s, fake_store.paper_spec("focal", c.dataset, c.imbalance, c.noise_type, c.noise_rate, 0,
                                                epochs=3, warmup_epochs=0, milestones=(1, 2)), "Focal", 12.0)
    built = tables.build(1, s.runs("done"), ref, "last")
    assert entry(built, "Focal", "CIFAR-100").ours.status == "incomplete"
    text = tables.render(built, "md")
    assert "12.00 (n=1)†" in text.split("## Table 1 detail: CIFAR-100")[1]
    line = [x for x in text.splitlines() if x.startswith("† ")]
    assert line == ["† not the runs `runs-for` trains (protocol away from the preset's, or method settings away from "
                    "the row's): epochs=3 warmup_epochs=0 milestones=1,2"]


def add_as_stored(store, spec, display, acc):
    """A fake finished run whose env records its method settings as ``bench run`` stores them."""
    from bench.execute import unnamed_settings
    return fake_store.add_run(store, spec, display, acc, env={"method_settings": unnamed_settings(spec)})


def test_method_settings_the_row_does_not_fix_are_marked_and_lose_to_the_runs_runs_for_trains(tmp_path, ref):
    """A MW-Net run with --set mwnet.meta_lr=0.1 is not the MW-Net(noise) run Table 2 asks for: alone
    on its cell it is shown with †, and beside the run `runs-for` trains, that one is used (it was
    shown unmarked, and beside the default run the cell was ambiguous, which runs-for never filled)."""
    from bench.execute import unnamed_settings
    from bench.store import Store

    store = Store(tmp_path / "s.sqlite")
    odd = fake_store.paper_spec("mwnet", "cifar10", 100, "none", 0, 0, {"variant": "noise", "meta_lr": 0.1})
    assert unnamed_settings(odd) == {"meta_lr": [0.1, None]}  # what bench run stores in the env
    add_as_stored(store, odd, "MW-Net(noise)", 42.0)
    alone = entry(tables.build(2, store.runs("done"), ref, "last"), "MW-Net(noise)", "imb 100, clean").ours
    assert (alone.status, alone.mean, alone.nonstandard) == ("ok", 42.0, "mwnet.meta_lr=0.1")
    plain = fake_store.paper_spec("mwnet", "cifar10", 100, "none", 0, 0, fake_store.MWNET_PARAMS["noise"])
    add_as_stored(store, plain, "MW-Net(noise)", 30.0)
    built = tables.build(2, store.runs("done"), ref, "last")
    chosen = entry(built, "MW-Net(noise)", "imb 100, clean").ours
    assert (chosen.status, chosen.mean, chosen.nonstandard, chosen.keys) == ("ok", 30.0, "", [plain.key()])
    p32 = fake_store.paper_spec("curvenet", "cifar10", 20, "flip2", 0.4, 0, {**fake_store.CURVENET_PARAMS,
                                                                          "embed_dim": 32})
    assert unnamed_settings(p32) == {"embed_dim": [32, 64]}
    add_as_stored(store, p32, "CurveNet", 50.0)
    fixed = entry(tables.build(9, store.runs("done"), ref, "last"), "P=32", "imb 20, flip2 0.4").ours
    assert (fixed.status, fixed.mean, fixed.nonstandard) == ("ok", 50.0, "")  # Table 9's row fixes P = 32


def test_table1_har_is_not_run_with_published_numbers(ref):
    built = tables.build(1, pd.DataFrame(), ref)
    row = tables.layout(built).set_index("method").loc["HAR"]
    assert row["CIFAR-10: ours"] == "not run" and row["CIFAR-10: paper"] == "73.50"
    assert row["CIFAR-100: paper"] == "42.88"
    c = tables.counts(built)
    assert c["cells"] == 9 * 30 and c["missing_cells"] == 9 * 30  # HAR's cells are not counted


# ------------------------------------------------------------------ other tables, formats

def test_ablation_tables_say_not_transcribed(store, ref):
    for n in ("6", "7", "9", "10"):
        built = tables.build(n, store.runs("done"), ref)
        assert all(e.paper_text == "not transcribed" and e.paper is None for e in built.entries)
        assert "not transcribed" in tables.render(built, "md")


def test_table8_rows_select_skip_layers_and_show_published_times(tmp_path, ref):
    s = Store(tmp_path / "t8.sqlite")
    cell = paper_tables.ABLATION_CELL
    for sl, acc in ((0, 11.0), (2, 13.0)):
        fake_store.add_run(s, fake_store.paper_spec("curvenet", "cifar10", cell.imbalance, cell.noise_type,
                                                    cell.noise_rate, 0, {**fake_store.CURVENET_PARAMS,
                                                                         "skip_layers": sl}), "CurveNet", acc)
    built = tables.build(8, s.runs("done"), ref)
    df = tables.layout(built).set_index("setting")
    assert df.loc["SL=0", "ours"] == "11.00 (n=1)" and df.loc["SL=2", "ours"] == "13.00 (n=1)"
    assert df.loc["SL=1", "ours"] == "missing" and df.loc["SL=3", "paper"] == "81.53"
    assert df.loc["SL=2", "paper meta ms"] == "65.44" and df.loc["SL=3", "paper ratio to SL=0"] == "0.17"


def test_table8_stored_meta_ms_only_for_a_cell_with_one_configuration(tmp_path, ref):
    s = Store(tmp_path / "t8ms.sqlite")
    cell = paper_tables.ABLATION_CELL

    def spec(sl, seed, **protocol):
        return fake_store.paper_spec("curvenet", "cifar10", cell.imbalance, cell.noise_type, cell.noise_rate, seed,
                                     {**fake_store.CURVENET_PARAMS, "skip_layers": sl}, **protocol)

    def hist(ms):
        return [{"stage": "allocate", "epoch": e, "meta_ms": m} for e, m in enumerate(ms)]

    # SL=0: one configuration, two seeds: medians 20 and 40 -> 30.00
    fake_store.add_run(s, spec(0, 0), "CurveNet", 11.0, history=hist([10.0, 20.0, 90.0]))
    fake_store.add_run(s, spec(0, 1), "CurveNet", 12.0, history=hist([40.0]))
    # SL=3: two short configurations (neither is the standard protocol) -> ambiguous, no figure
    fake_store.add_run(s, spec(3, 0, epochs=3, milestones=(1, 2)), "CurveNet", 13.0, history=hist([5.0]))
    fake_store.add_run(s, spec(3, 0, epochs=4, milestones=(1, 2)), "CurveNet", 14.0, history=hist([7.0]))
    built = tables.build(8, s.runs("done"), ref, history=s.history)
    df = tables.layout(built).set_index("setting")
    assert df.loc["SL=0", "ours meta ms (stored)"] == "30.00"
    assert df.loc["SL=3", "ours"] == "ambiguous" and df.loc["SL=3", "ours meta ms (stored)"] == "—"
    assert df.loc["SL=1", "ours meta ms (stored)"] == "—"  # no runs


def test_formats_csv_json_latex(store, ref):
    built = tables.build(2, store.runs("done"), ref)
    rows = list(csv.DictReader(tables.render(built, "csv").splitlines()))
    assert len(rows) == 18
    r = [r for r in rows if r["row"] == "MW-Net(imb)" and r["column"] == "imb 50, clean"][0]
    assert (float(r["ours_mean"]), int(r["n_seeds"]), float(r["published"])) == (12.0, 3, 77.55)
    assert len(r["run_keys"].split()) == 3 and "curvenet_aaai2022.csv" in r["published_source"]
    data = json.loads(tables.render(built, "json"))
    assert data["counts"]["missing_entries"] == 14
    latex = tables.render(built, "latex")
    assert "\\toprule" in latex and "77.55" in latex


def test_markdown_lists_the_runs_behind_every_cell(store, ref):
    built = tables.build(2, store.runs("done"), ref)
    text = tables.render(built, "md")
    for e in built.entries:
        for key in e.ours.keys:
            assert key[:12] in text


def test_paper_requests():
    reqs = paper_tables.paper_requests(2)
    cells = GRIDS["table2"]
    assert all(r["cells"] == cells and r["preset"] == "paper" for r in reqs)
    sets = sorted((r["methods"], tuple(r["set"])) for r in reqs)
    assert sets == [("curvenet", ()), ("mwnet", ("mwnet.variant=imb",)), ("mwnet", ("mwnet.variant=noise",))]
    r1 = paper_tables.paper_requests(1)
    plain = [r for r in r1 if not r["set"]][0]
    assert set(plain["methods"].split(",")) == {"ce", "cb", "focal", "ldam_drw", "coteaching", "o2u", "curvenet"}
    assert plain["cells"] == GRIDS["cifar10"] + GRIDS["cifar100"]
    r8 = paper_tables.paper_requests(8)
    assert sorted(tuple(r["set"]) for r in r8) == [(), ("curvenet.skip_layers=1",), ("curvenet.skip_layers=2",),
                                                    ("curvenet.skip_layers=3",)]
    assert all(r["cells"] == [paper_tables.ABLATION_CELL] for r in r8)
    r7 = paper_tables.paper_requests(7)
    assert sorted((r.get("meta_per_class"), tuple(r["set"])) for r in r7) == [
        (0, ()), (0, ("curvenet.meta_set=pseudo",)), (10, ()), (20, ()), (50, ()), (80, ()), (100, ())]
    r6 = paper_tables.paper_requests(6)
    assert {r["model"] for r in r6} == {"resnet32", "wrn16_8"}
    # +DRW as the official code: class counts from the clean labels
    drw_clean = ("curvenet.drw=true", "curvenet.drw_counts=clean")
    assert sorted(tuple(r["set"]) for r in r6) == [(), (), drw_clean, drw_clean]
    with pytest.raises(BenchError):
        paper_tables.paper_requests(4)


def test_curvenet_defaults_match_the_method():
    curvenet = pytest.importorskip("methods.curvenet")
    import dataclasses

    cls = [v for v in vars(curvenet).values() if isinstance(v, type) and getattr(v, "name", None) == "curvenet"][0]
    fields = {f.name: f.default for f in dataclasses.fields(cls.Params)}
    for name, value in paper_tables.CURVENET_DEFAULTS.items():
        assert name in fields and fields[name] == value, name


def test_cli_table_paper_2(tmp_path, store):
    out = subprocess.run([sys.executable, "-m", "bench", "table", "--paper", "2", "--metric", "last", "--store",
                          str(store.path)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "12.00 ± 1.00 (n=3)" in out.stdout and "77.55" in out.stdout and "missing" in out.stdout
    assert "Metric: **last**" in out.stdout
    # the hint to train what is missing names the store the table was read from
    assert f"To train what is missing: `python -m bench runs-for --paper 2 --store {store.path}`" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "bench", "table", "--paper", "5", "--store", str(store.path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "no paper table" in bad.stderr


def test_cli_write_all(tmp_path, store):
    out = subprocess.run([sys.executable, "-m", "bench", "table", "--paper", "all", "--write", "--store",
                          str(store.path)], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT), "BENCH_REFERENCE_DIR":
                              str(ROOT / "tables" / "reference")})
    assert out.returncode == 0, out.stderr
    written = sorted(p.name for p in (tmp_path / "tables").glob("*.md"))
    assert written == sorted([f"table{n}.md" for n in paper_tables.PAPER_TABLES] + ["anchors.md"])
    # --write DIR: elsewhere, in the chosen format; a path that cannot be written is one line
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT),
           "BENCH_REFERENCE_DIR": str(ROOT / "tables" / "reference")}
    out = subprocess.run([sys.executable, "-m", "bench", "table", "--paper", "2", "--format", "latex", "--write",
                          str(tmp_path / "paper" / "tex"), "--store", str(store.path)], capture_output=True,
                         text=True, cwd=tmp_path, timeout=120, env=env)
    assert out.returncode == 0 and f"wrote {tmp_path / 'paper' / 'tex' / 'table2.tex'}" in out.stderr
    assert (tmp_path / "paper" / "tex" / "table2.tex").read_text().strip() == out.stdout.strip()
    (tmp_path / "afile").write_text("")
    bad = subprocess.run([sys.executable, "-m", "bench", "table", "--paper", "2", "--write", str(tmp_path / "afile"),
                          "--store", str(store.path)], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env=env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "it is a file; give a folder" in bad.stderr


def test_runs_for_paper_specs_fill_exactly_their_table(tmp_path, ref):
    """Round trip: the specs `bench runs-for --paper N` trains, stored with fake metrics, fill every
    cell of table N (standard protocol, no ambiguity) and nothing else is needed."""
    from bench.arguments import paper_specs
    from bench.cli import make_parser
    from bench.execute import display_name

    s = Store(tmp_path / "rt.sqlite")
    for n in paper_tables.ALL_TABLES:
        specs = paper_specs(make_parser().parse_args(["runs-for", "--paper", n, "--seeds", "0,1"]))
        assert len({sp.key() for sp in specs}) == len(specs)
        for i, sp in enumerate(specs):
            if s.status(sp.key()) is None:
                add_as_stored(s, sp, display_name(sp), 10.0 + (i % 7) + sp.seed)
        built = tables.build(n, s.runs("done"), ref)
        for e in built.entries:
            if e.ours.status == "not run":
                continue
            assert e.ours.status == "ok" and e.ours.n == 2 and not e.ours.nonstandard, (n, e.row, e.column)
        used = {k for e in built.entries for k in e.ours.keys}
        assert used == {sp.key() for sp in specs}, n


def test_tables_and_plots_never_import_torch():
    code = ("import sys, bench.tables, bench.plots, bench.show, bench.store; "
            "bench.paper_tables.paper_requests('all'); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_runs_differing_only_in_data_seed_count_as_one_seed(tmp_path, ref):
    s = Store(tmp_path / "ds.sqlite")
    for data_seed, acc in ((0, 20.0), (5, 30.0)):
        sp = fake_store.paper_spec("mwnet", "cifar10", 50, "none", 0, 0, {"variant": "imb"}).replace(
            data_seed=data_seed)
        fake_store.add_run(s, sp, "MW-Net(imb)", acc)
    fake_store.add_run(s, fake_store.paper_spec("mwnet", "cifar10", 50, "none", 0, 1, {"variant": "imb"}),
                       "MW-Net(imb)", 35.0)
    e = entry(tables.build(2, s.runs("done"), ref), "MW-Net(imb)", "imb 50, clean")
    assert (e.ours.n, e.ours.mean, len(e.ours.keys)) == (2, pytest.approx(30.0), 3)  # seed 0: 25, seed 1: 35


# ------------------------------------------------------------------ selection, aggregation and rendering in detail

def test_two_standard_configurations_are_ambiguous_and_their_runs_are_listed_apart(tmp_path, ref):
    """Two configurations of the standard protocol (here: another meta lr) are as ambiguous as two
    short ones: no number, the one difference named, the keys listed as ambiguous, not as a
    cell's runs, and the cell counted as missing."""
    s = Store(tmp_path / "amb.sqlite")
    keys = [fake_store.add_run(s, fake_store.paper_spec("mwnet", "cifar10", 50, "none", 0, 0, params), "MW-Net(imb)",
                               acc) for params, acc in (({"variant": "imb"}, 20.0),
                                                        ({"variant": "imb", "meta_lr": 1e-4}, 30.0))]
    built = tables.build(2, s.runs("done"), ref)
    e = entry(built, "MW-Net(imb)", "imb 50, clean")
    assert e.ours.status == "ambiguous" and sorted(e.ours.keys) == sorted(keys)
    assert e.ours.detail == "2 configurations match; differences: params.meta_lr: null vs 0.0001"
    assert tables.counts(built) == {"entries": 18, "with_runs": 0, "missing_entries": 18, "failed_runs": 0}
    text = tables.render(built, "md")
    assert f"ambiguous: MW-Net(imb) / imb 50, clean: {e.ours.detail} (keys {keys[0][:12]}, {keys[1][:12]})" in text
    assert "- ours: no stored runs" in text


def test_ours_is_the_mean_over_seeds_and_runs_without_the_metric_are_left_out(tmp_path, ref):
    s = Store(tmp_path / "m.sqlite")

    def spec(seed, imbalance=50):
        return fake_store.paper_spec("mwnet", "cifar10", imbalance, "none", 0, seed, {"variant": "imb"})

    for seed, acc in ((0, 10.0), (1, 11.0), (2, 15.0)):  # mean 12, median 11
        fake_store.add_run(s, spec(seed), "MW-Net(imb)", acc)
    no_metric = fake_store.add_run(s, spec(3), "MW-Net(imb)", float("nan"))  # acc_last stored as NaN
    only_nan = fake_store.add_run(s, spec(0, imbalance=100), "MW-Net(imb)", float("nan"))
    built = tables.build(2, s.runs("done"), ref)
    e = entry(built, "MW-Net(imb)", "imb 50, clean")
    assert (e.ours.status, e.ours.n, e.ours.mean) == ("ok", 3, pytest.approx(12.0)) and no_metric not in e.ours.keys
    e = entry(built, "MW-Net(imb)", "imb 100, clean")
    assert (e.ours.status, e.ours.keys, e.ours.detail) == ("missing", [], "no stored acc_last")
    assert only_nan not in tables.render(built, "md")


def test_a_row_counts_only_its_display_name_and_preset_and_anchors_show_both_papers(tmp_path, ref):
    s = Store(tmp_path / "ldam.sqlite")
    # LDAM without DRW names itself "LDAM": not the LDAM-DRW row
    fake_store.add_run(s, fake_store.paper_spec("ldam_drw", "cifar10", 100, "none", 0, 0, {"drw": False},
                                                meta_per_class=10), "LDAM", 15.0)
    # the paper protocol on the right model, but run under another preset
    fake_store.add_run(s, fake_store.paper_spec("ce", "cifar10", 100, "none", 0, 0, meta_per_class=10).replace(
        preset="quick"), "CE", 16.0)
    built = tables.build("anchors", s.runs("done"), ref)
    assert entry(built, "LDAM-DRW", "CIFAR-10 imb 100").ours.status == "missing"
    assert entry(built, "CE", "CIFAR-10 imb 100").ours.status == "missing"
    df = tables.layout(built).set_index("method")
    assert df.loc["LDAM-DRW", "CIFAR-10 imb 100: paper"] == "77.03"  # LDAM-DRW paper, Table 2
    assert df.loc["CE", "CIFAR-10 imb 100: paper"] == "70.36"        # MW-Net paper
    assert df.loc["LDAM-DRW", "CIFAR-10 imb 200: paper"] == "—"


def test_duplicate_published_values_are_an_error(ref):
    dup = pd.concat([ref, ref[(ref["table"] == "1") & (ref["method"] == "CE")].iloc[[0]]], ignore_index=True)
    with pytest.raises(BenchError, match="hold 2 values"):
        paper_tables.published(dup, "1", "CE", dataset="cifar10", metric="MA")


def test_ma_is_the_mean_over_cells_per_seed_and_table1_counts_pairs(tmp_path, ref):
    cells = GRIDS["cifar100"]
    s = _grid_store(tmp_path / "sq.sqlite", cells, lambda i: (0,), acc=lambda i, seed: 10.0 + i * i / 10)
    # the last cell: two short configurations only -> ambiguous, so no MA
    for epochs in (3, 4):
        c = cells[-1]
        fake_store.add_run(s, fake_store.paper_spec("focal", c.dataset, c.imbalance, c.noise_type, c.noise_rate, 0,
                                                    epochs=epochs), "Focal", 12.0)
    for c in cells[:-1]:
        fake_store.add_run(s, fake_store.paper_spec("focal", c.dataset, c.imbalance, c.noise_type, c.noise_rate, 0),
                           "Focal", 12.0)
    built = tables.build(1, s.runs("done"), ref)
    e = entry(built, "CE", "CIFAR-100")
    assert e.ours.mean == pytest.approx(np.mean([10.0 + i * i / 10 for i in range(len(cells))]))
    assert entry(built, "Focal", "CIFAR-100").ours.status == "incomplete"
    text = tables.render(built, "md")
    assert "**Missing:** 247 of 270 (method, cell) pairs have no usable runs; 17 of 18 MA entries" in text
    assert "- ours: 23 cells from stored runs" in text  # 12 CE + 11 Focal cells: not the ambiguous one
    records = tables.long_records(built)
    ce = [r for r in records if r["row"] == "CE" and r["column"] == "CIFAR-100"][0]
    assert ce["metric"] == "MA of acc_last" and ce["n_seeds"] == 1 and ce["ours_std"] is None
    assert "NaN" not in tables.render(built, "json")


def test_table8_stored_meta_ms_is_the_mean_over_runs_of_their_median(tmp_path, ref):
    s = Store(tmp_path / "t8mean.sqlite")
    cell = paper_tables.ABLATION_CELL

    def spec(sl, seed):
        return fake_store.paper_spec("curvenet", "cifar10", cell.imbalance, cell.noise_type, cell.noise_rate, seed,
                                     {**fake_store.CURVENET_PARAMS, "skip_layers": sl})

    # SL=0, three seeds: medians 10, 20, 60 -> 30 (their median would be 20); the older column name counts
    for seed, name, ms in ((0, "meta_ms", [10.0]), (1, "meta_ms", [20.0]), (2, "meta_time_ms", [60.0])):
        fake_store.add_run(s, spec(0, seed), "CurveNet", 11.0,
                           history=[{"stage": "allocate", "epoch": e, name: m} for e, m in enumerate(ms)])
    # SL=1: a run that logged both names: meta_ms is the one read
    fake_store.add_run(s, spec(1, 0), "CurveNet", 11.0,
                       history=[{"stage": "allocate", "epoch": 0, "meta_ms": 8.0, "meta_time_ms": 100.0}])
    built = tables.build(8, s.runs("done"), ref, history=s.history)
    df = tables.layout(built).set_index("setting")
    assert df.loc["SL=0", "ours meta ms (stored)"] == "30.00" and df.loc["SL=1", "ours meta ms (stored)"] == "8.00"
    text = tables.render(built, "md")
    assert "- paper meta ms: tables/reference/curvenet_aaai2022.csv (" in text


def test_render_not_available_line_latex_comments_and_the_csv_std(store, ref):
    built = tables.build(2, store.runs("done"), ref)
    text = tables.render(built, "md")
    assert "Not available: MW-Net(imb) / imb 100, clean (missing); MW-Net(imb) / imb 200, clean (missing);" in text
    assert "Not available" not in tables.render(tables.build(2, pd.DataFrame(), ref), "md")  # all missing: no list
    latex = tables.render(built, "latex")
    prose = [line for line in latex.splitlines() if line and not line.startswith(("\\", "%"))
             and "&" not in line]
    assert prose == [] and "% **Missing:** 14 of 18 cells" in latex
    rows = list(csv.DictReader(tables.render(built, "csv").splitlines()))
    r = [r for r in rows if r["row"] == "CurveNet" and r["column"] == "imb 1, flip2 0.4"][0]
    assert r["ours_std"] == "1.4142"


def test_main_joins_csv_and_json_of_several_tables_and_writes_latex_as_tex(store, tmp_path, monkeypatch, capsys):
    from argparse import Namespace

    def main(fmt, write=None):
        assert tables.main(Namespace(paper="2,3", format=fmt, metric="last", group="all", store=str(store.path),
                                     write=write)) == 0
        return capsys.readouterr().out

    rows = list(csv.DictReader(main("csv").splitlines()))
    assert len(rows) == 18 + 18 and {r["table"] for r in rows} == {"2", "3"}
    assert [d["table"] for d in json.loads(main("json"))] == ["2", "3"]
    monkeypatch.chdir(tmp_path)
    main("latex", write="tables")  # what the CLI's bare --write gives
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == ["table2.tex", "table3.tex"]


def test_reading_commands_never_import_torch(tmp_path):
    """`bench table`, `show` and `compare` read the store only: no torch at start-up (every
    command's parser is built then) nor while they run."""
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    import fake_store

    store = tmp_path / "s.sqlite"
    built = fake_store.build(store)
    fake_store.add_fake_curvenet_run(built)  # per-sample weights: the separation metrics read them
    fake_store.add_fake_trust_run(built, "ce", "CE", {})
    built.close()
    code = ("import sys; from bench.cli import main; "
            f"codes = [main(['table', '--store', {str(store)!r}]), main(['show', '--store', {str(store)!r}]), "
            f"main(['compare', 'MW-Net(imb)', 'MW-Net(noise)', '--store', {str(store)!r}]), "
            f"main(['table', '--metric', 'tail_auroc', '--average', '--store', {str(store)!r}]), "
            f"main(['compare', 'CurveNet', 'CE', '--metric', 'noise_auroc', '--store', {str(store)!r}])]; "
            "print(codes, 'torch' in sys.modules, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stderr.strip().splitlines()[-1] == "[0, 0, 0, 0, 0] False", out.stderr


def test_paper_requests_of_the_ablation_tables_9_and_10_and_the_anchors():
    """Table 9 varies CurveNet's embedding size P (32, 64, 96), Table 10 the dropped leading probe
    epochs S (5, 30, 60), each on the ablation cell with the defaults elsewhere; the anchors run on
    the long-tailed clean CIFAR cells with 10 clean meta samples per class removed (MW-Net's code)."""
    for n, expected in (("9", [(), ("curvenet.embed_dim=32",), ("curvenet.embed_dim=96",)]),
                        ("10", [(), ("curvenet.drop_first=30",), ("curvenet.drop_first=60",)])):
        reqs = paper_tables.paper_requests(n)
        assert sorted(tuple(r["set"]) for r in reqs) == expected, n
        assert all(r["methods"] == "curvenet" and r["cells"] == [paper_tables.ABLATION_CELL]
                   and r["model"] == "resnet32" and "meta_per_class" not in r for r in reqs), n
    anchors = paper_tables.paper_requests("anchors")
    cells = [Cell("cifar10", float(i), "none", 0.0) for i in (200, 100, 50, 20, 10, 1)] + [
        Cell("cifar100", float(i), "none", 0.0) for i in (100, 10)]
    assert all(r["cells"] == cells and r["meta_per_class"] == 10 and r["preset"] == "paper" for r in anchors)
    assert sorted((tuple(sorted(r["methods"].split(","))), tuple(r["set"])) for r in anchors) == [
        (("cb", "ce", "focal", "ldam_drw"), ()), (("mwnet",), ("mwnet.variant=imb",))]


def test_table_numbers_read_all_lists_and_any_case():
    assert paper_tables.table_numbers("all") == ["1", "2", "3", "6", "7", "8", "9", "10", "anchors"]
    assert paper_tables.table_numbers(" 2, 8 ,") == ["2", "8"]
    assert paper_tables.get_table(" Anchors ").number == "anchors"
    with pytest.raises(BenchError, match="no paper table '5'"):
        paper_tables.table_numbers("2,5")


def test_paper_requests_of_all_tables_ask_for_each_method_once_per_request():
    for r in paper_tables.paper_requests("all"):
        names = r["methods"].split(",")
        assert len(names) == len(set(names)), r


def test_the_reference_dir_is_bench_reference_dir_first_and_only_a_folder_with_csvs(tmp_path, monkeypatch):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "x.csv").write_text("paper,value\n")
    monkeypatch.setenv("BENCH_REFERENCE_DIR", str(tmp_path / "mine"))
    assert paper_tables.reference_dir() == tmp_path / "mine"
    (tmp_path / "empty" / "tables" / "reference").mkdir(parents=True)  # a folder without csv files is skipped
    monkeypatch.setenv("BENCH_REFERENCE_DIR", str(tmp_path / "empty" / "tables" / "reference"))
    monkeypatch.chdir(tmp_path / "empty")
    assert paper_tables.reference_dir() == ROOT / "tables" / "reference"


def test_published_tells_noise_types_of_one_cell_apart(ref):
    """Two published values on one dataset, imbalance and rate, of different noise types: each
    cell gets its own."""
    row = ref[(ref["paper"] == "curvenet_aaai2022") & (ref["table"] == "3") & (ref["method"] == "CurveNet")].iloc[[0]]
    other = row.assign(noise_type="flip2", value=1.25)
    both = pd.concat([ref, other], ignore_index=True)
    cell = Cell(row["dataset"].iloc[0], float(row["imbalance"].iloc[0]), "uniform", float(row["noise_rate"].iloc[0]))
    assert paper_tables.published(both, "3", "CurveNet", cell=cell)["value"] == float(row["value"].iloc[0])
    flip = Cell(cell.dataset, cell.imbalance, "flip2", cell.noise_rate)
    assert paper_tables.published(both, "3", "CurveNet", cell=flip)["value"] == 1.25
