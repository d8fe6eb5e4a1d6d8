"""`bench table` (bench/summary.py): runs are averaged together only when they differ in nothing
but their seeds; other settings get rows of their own, labelled with what sets them apart."""

import json

import pandas as pd

from bench import tables
from bench.errors import BenchError
from bench.spec import RunSpec
from bench.summary import RECORD_COLUMNS, results_table, row_labels


def frame(*runs):
    """A store-like runs frame from (RunSpec, display name, accuracy) triples."""
    rows = []
    for spec, name, acc in runs:
        d = spec.to_dict()
        rows.append(dict(key=spec.key(), display_name=name, spec_json=json.dumps(d), acc_last=acc,
                         **{k: d[k] for k in ("dataset", "imbalance", "noise_type", "noise_rate", "preset", "model",
                                              "seed")}))
    return pd.DataFrame(rows)


def test_seeds_are_averaged_and_nothing_else_is():
    ce = RunSpec("ce")
    runs = frame((ce, "CE", 60.0), (ce.replace(seed=1), "CE", 62.0),
                 (ce.replace(precision="bf16"), "CE", 70.0),
                 (ce.replace(epochs=3, warmup_epochs=0, milestones=(1, 2)), "CE", 40.0),
                 (ce.replace(epochs=3, warmup_epochs=0, milestones=(2,)), "CE", 45.0))
    labels = row_labels(runs)
    # the schedule --epochs scales is told by the epochs; one set apart from it is shown
    assert labels[0] == labels[1] == "CE [epochs=20 precision=fp32]"
    assert labels[2] == "CE [epochs=20 precision=bf16]"
    assert labels[3] == "CE [epochs=3 precision=fp32]"
    assert labels[4] == "CE [epochs=3 milestones=2 precision=fp32]"
    table = results_table(runs)
    assert table.loc[labels[0]].tolist() == ["61.00 ± 1.41 (n=2)"]
    assert table.loc[labels[2]].tolist() == ["70.00 (n=1)"] and table.loc[labels[3]].tolist() == ["40.00 (n=1)"]
    assert table.loc[labels[4]].tolist() == ["45.00 (n=1)"]


def test_one_setting_per_method_and_cell_keeps_the_plain_name():
    ce, focal = RunSpec("ce"), RunSpec("focal", params=(("gamma", 1.0),))
    runs = frame((ce, "CE", 60.0), (ce.replace(seed=1), "CE", 62.0), (focal, "Focal", 61.0),
                 # meta_per_class differs between cells (a per-dataset default): not a variant
                 (ce.replace(dataset="cifar100", imbalance=1.0, meta_per_class=10), "CE", 80.0))
    assert row_labels(runs) == ["CE", "CE", "Focal", "CE"]
    table = results_table(runs)
    assert sorted(table.index) == ["CE", "Focal"] and table.shape == (2, 2)


def test_a_setting_changed_on_one_cell_only_gets_its_own_row_and_is_not_averaged_in():
    """CE at its preset's 20 epochs on imb10 and at 3 epochs on imb50 were one "CE" row, whose
    --average pooled the 20-epoch and 3-epoch results; the 3-epoch runs are now their own row, the
    plain one keeps its name, and neither covers both cells, so neither gets a mean."""
    ce = RunSpec("ce", imbalance=10.0)
    short = ce.replace(imbalance=50.0, epochs=3, warmup_epochs=0, milestones=(1, 2))  # as --epochs 3 scales them
    runs = frame((ce, "CE", 50.0), (ce.replace(seed=1), "CE", 52.0),
                 (short, "CE", 20.0), (short.replace(seed=1), "CE", 22.0))
    assert row_labels(runs) == ["CE", "CE", "CE [epochs=3]", "CE [epochs=3]"]
    table = results_table(runs, average=True)
    assert sorted(table.index) == ["CE", "CE [epochs=3]"]
    assert table.iloc[:, -1].tolist() == ["—", "—"]  # no row covers both cells: no pooled mean
    # the same 3 epochs on every cell: one row, named plainly (the note under the table says epochs 3)
    both = frame((short, "CE", 20.0), (short.replace(imbalance=10.0), "CE", 30.0))
    assert row_labels(both) == ["CE", "CE"]


def test_columns_of_one_cell_under_two_protocols_keep_one_order_whatever_the_rows():
    """One cell run under the quick and the paper preset: the columns sort by preset then model,
    as the CSV / JSON records do, not by whichever method happens to come first."""
    quick = RunSpec("ce", imbalance=10.0)
    paper = quick.replace(preset="paper", model="resnet32")
    for rows in ([(quick, "Alpha", 50.0), (paper, "Beta", 60.0)], [(paper, "Alpha", 60.0), (quick, "Beta", 50.0)]):
        assert list(results_table(frame(*rows)).columns) == ["fmnist-mini imb10 flip2:0.4 [paper/resnet32]",
                                                             "fmnist-mini imb10 flip2:0.4 [quick/small_cnn]"]


def test_method_hyperparameters_tell_variants_apart():
    runs = frame((RunSpec("focal", params=(("gamma", 1.0),)), "Focal", 61.0),
                 (RunSpec("focal", params=(("gamma", 2.0),)), "Focal", 63.0))
    assert row_labels(runs) == ["Focal [focal.gamma=1]", "Focal [focal.gamma=2]"]


def test_paper_tables_mark_bf16_and_prefer_fp32():
    spec = RunSpec("ce", preset="paper", dataset="cifar10", model="resnet32", epochs=200, warmup_epochs=5,
                   milestones=(80, 100))
    assert tables._protocol_diff(spec.to_dict(), "paper") == ""
    assert tables._protocol_diff(spec.replace(precision="bf16").to_dict(), "paper") == "precision=bf16"


def test_bench_table_formats_and_empty_results(tmp_path, capsys):
    """``bench table``: LaTeX without --paper, an empty shot group named as such (not an empty
    store), CSV and JSON documents with no rows for machine readers, --write only with --paper."""
    import csv
    import sys
    from pathlib import Path

    from bench.cli import main
    from bench.store import Store

    sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
    import fake_store

    path = tmp_path / "s.sqlite"
    store = Store(path)
    fake_store.add_run(store, RunSpec(method="ce", seed=0), "CE", 61.0)  # metrics without any few-shot group
    store.close()

    def table(*args):
        code = main(["table", "--store", str(path), *args])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = table("--format", "latex")
    assert code == 0 and "\\toprule" in out and "61.00 (n=1)" in out and "|" not in out
    code, out, _ = table("--group", "few")
    assert code == 0 and "no few-shot classes (fewer than 20 training samples)" in out and "1 finished" in out
    code, out, err = table("--group", "few", "--format", "json")
    assert code == 0 and json.loads(out)["rows"] == [] and "no few-shot classes" in err
    code, out, _ = table("--group", "few", "--format", "csv")
    assert code == 0 and list(csv.reader(out.splitlines())) == [list(RECORD_COLUMNS)]
    code, _, err = table("--write")
    assert code == 2 and "give --paper" in err
    # --method takes the names tables show, case aside; one no run is of, or a typo, is said
    assert table("--method", "ce")[1] == table("--method", "CE")[1]
    code, out, err = table("--method", "focal")
    assert code == 0 and "none of the 1 finished run(s) in the store is of --method focal" in out
    assert "no finished runs of focal in" in err and "(its runs are of ce)" in err
    for shown, name in (("MW-Net", "mwnet"), ("Class-Balanced", "cb"), ("O2U-Net", "o2u")):  # no run of them here
        code, out, err = table("--method", shown)
        assert code == 0 and f"no finished runs of {name} in" in err, (shown, err)
    code, out, err = table("--method", "fokal")
    assert code == 2 and "unknown method 'fokal'" in err
    code, out, _ = table("--cell", "cifar10:10:none")
    assert code == 0 and "none of the 1 finished run(s) in the store is of --cell cifar10:10:none" in out


def test_bench_table_csv_and_json_give_numbers_one_record_per_method_and_cell(tmp_path, capsys):
    """Machine-readable output holds numbers (mean, sample std with ddof 1, seeds), not the
    Markdown's "61.00 ± 1.41 (n=2)" text; a one-seed std is empty (CSV) or null (JSON)."""
    import csv
    import statistics
    import sys
    from pathlib import Path

    from bench.cli import main
    from bench.store import Store

    sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
    import fake_store

    path = tmp_path / "s.sqlite"
    store = Store(path)
    ce = RunSpec(method="ce")
    for seed, acc in ((0, 60.0), (1, 62.5), (2, 61.0)):
        fake_store.add_run(store, ce.replace(seed=seed), "CE", acc)
    fake_store.add_run(store, ce.replace(imbalance=5.0), "CE", 30.0)
    store.close()

    def table(*args):
        assert main(["table", "--store", str(path), *args]) == 0
        return capsys.readouterr().out

    rows = list(csv.DictReader(table("--format", "csv").splitlines()))
    assert list(rows[0]) == list(RECORD_COLUMNS) and len(rows) == 2
    by_imb = {float(r["imbalance"]): r for r in rows}
    r = by_imb[10.0]
    assert (r["method"], r["cell"], r["dataset"], r["noise_type"], float(r["noise_rate"])) == (
        "CE", "fmnist-mini imb10 flip2:0.4", "fmnist-mini", "flip2", 0.4)
    assert (r["preset"], r["model"], r["metric"], int(r["n"])) == ("quick", "small_cnn", "acc_last", 3)
    assert float(r["mean"]) == 61.1667 and float(r["std"]) == round(statistics.stdev([60.0, 62.5, 61.0]), 4)
    assert (float(by_imb[5.0]["mean"]), by_imb[5.0]["std"], by_imb[5.0]["n"]) == (30.0, "", "1")
    data = json.loads(table("--format", "json", "--metric", "best"))  # fake acc_best = acc_last + 1
    one = [r for r in data["rows"] if r["imbalance"] == 5.0][0]
    assert (one["mean"], one["std"], one["n"], one["metric"]) == (31.0, None, 1, "acc_best")
    three = [r for r in data["rows"] if r["imbalance"] == 10.0][0]
    assert three["mean"] == 62.1667 and three["n"] == 3 and isinstance(three["std"], float)
    md = table()
    assert "61.17 ± 1.26 (n=3)" in md  # Markdown keeps its text, and says which std it is
    assert md.startswith("test accuracy (%), last epoch, mean ± sample std (ddof 1) over seeds\n")


def test_bench_table_messages_go_to_stderr_in_every_format(tmp_path, capsys):
    """With no finished runs, LaTeX output stays a document (empty) and the reason goes to stderr,
    as for CSV and JSON; the failed-runs notice goes to stderr whatever the format."""
    import sys
    from pathlib import Path

    from bench.cli import main
    from bench.store import Store

    sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
    import fake_store

    path = tmp_path / "s.sqlite"
    store = Store(path)
    fake_store.add_run(store, RunSpec(method="ce"), "CE", 0.0, status="failed")
    store.close()
    for fmt in ("md", "latex", "csv", "json"):
        assert main(["table", "--store", str(path), "--format", fmt]) == 0
        out, err = capsys.readouterr()
        assert "1 failed run(s)" in err and "--retry-failed" in err and "failed" not in out, fmt
        assert "`python -m bench show --status failed` says why" in err
        if fmt == "md":
            assert out == "no finished runs in the store\n" and "no finished" not in err
        else:
            assert "bench: no finished runs in the store" in err and "no finished" not in out, fmt
    assert main(["table", "--store", str(path), "--format", "latex"]) == 0
    assert capsys.readouterr().out == ""


def test_shot_group_help_matches_the_training_metrics():
    from bench.cli import GROUP_RULE
    from bench.train import FEW_SHOT_BELOW, MANY_SHOT_ABOVE

    assert GROUP_RULE["many"] == f"more than {MANY_SHOT_ABOVE}"
    assert GROUP_RULE["medium"] == f"{FEW_SHOT_BELOW} to {MANY_SHOT_ABOVE}"
    assert GROUP_RULE["few"] == f"fewer than {FEW_SHOT_BELOW}"


def test_table_reads_the_asked_metric_and_group_and_averages_with_the_mean():
    """Three seeds: the mean (not the median) and the sample std (ddof 1) of the asked column;
    ``--metric best`` reads acc_best, ``--group few`` few_last; a run without a value is left out of
    the count; cells are ordered by imbalance as a number (imb5 before imb10)."""
    import statistics

    ce = RunSpec("ce")
    runs = frame((ce, "CE", 60.0), (ce.replace(seed=1), "CE", 61.0), (ce.replace(seed=2), "CE", 65.0),
                 (ce.replace(imbalance=5.0), "CE", 30.0))
    runs["acc_best"] = [70.0, 72.0, 71.0, 35.0]
    runs["few_last"] = [10.0, float("nan"), 30.0, 5.0]
    cell10, cell5 = "fmnist-mini imb10 flip2:0.4", "fmnist-mini imb5 flip2:0.4"

    def shown(values):
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"

    last = results_table(runs)
    assert list(last.columns) == [cell5, cell10]
    assert last.loc["CE", cell10] == shown([60.0, 61.0, 65.0]) == "62.00 ± 2.65 (n=3)"
    assert results_table(runs, metric="best").loc["CE", cell10] == shown([70.0, 72.0, 71.0])
    assert results_table(runs, metric="best").loc["CE", cell5] == "35.00 (n=1)"
    assert results_table(runs, group="few").loc["CE", cell10] == shown([10.0, 30.0])


def test_summarize_takes_best_epoch_of_the_final_stage_with_its_groups():
    """bench/execute.py summarize: last = the returned model's evaluation; best = the final stage's
    evaluation with the highest test accuracy, and that same epoch's many/medium/few figures."""
    from types import SimpleNamespace

    from bench.execute import summarize

    def ev(stage, epoch, acc, many, medium, few):
        return dict(stage=stage, epoch=epoch, test_acc=acc, many=many, medium=medium, few=few)

    history = [ev("probe", 0, 95.0, 99.0, 98.0, 97.0),  # an earlier stage never counts
               ev("train", 0, 50.0, 60.0, 50.0, 40.0), {"stage": "train", "epoch": 1, "loss": 1.0},
               ev("train", 2, 70.0, 80.0, 66.0, 55.0), ev("train", 3, 65.0, 90.0, 60.0, 45.0)]
    last = dict(acc=65.0, many=90.0, medium=60.0, few=45.0, per_class=[1.0, 2.0])
    run = SimpleNamespace(evaluate=lambda model: last, history=history,
                          data=SimpleNamespace(train_counts=[500, 50, 5]))
    m = summarize(run, None)
    assert (m["acc_last"], m["many_last"], m["medium_last"], m["few_last"]) == (65.0, 90.0, 60.0, 45.0)
    assert (m["acc_best"], m["many_best"], m["medium_best"], m["few_best"], m["best_epoch"]) == \
        (70.0, 80.0, 66.0, 55.0, 2)
    assert m["train_counts"] == [500, 50, 5] and m["per_class_last"] == [1.0, 2.0]


def test_a_lone_run_with_a_run_wide_setting_is_labelled_with_it():
    """A run that trained on other data (train_on_meta) or in bf16 is never shown as the plain
    method, even with no plain run beside it."""
    runs = frame((RunSpec("ce", train_on_meta=True), "CE", 60.0), (RunSpec("focal", precision="bf16"), "Focal", 61.0),
                 (RunSpec("cb"), "Class-Balanced", 62.0))
    assert row_labels(runs) == ["CE [train_on_meta=True]", "Focal [precision=bf16]", "Class-Balanced"]


def test_runs_differing_only_in_data_seed_count_as_one_training_seed_as_in_the_paper_tables():
    ce = RunSpec("ce")
    runs = frame((ce, "CE", 60.0), (ce.replace(data_seed=1), "CE", 62.0), (ce.replace(seed=1, data_seed=1), "CE", 70.0))
    cell = "fmnist-mini imb10 flip2:0.4"
    assert results_table(runs).loc["CE", cell] == "65.50 ± 6.36 (n=2)"  # mean of (61, 70) over two seeds


def test_training_minutes_from_the_runs_env_else_their_last_attempts_wall_time():
    """``--metric minutes``: env["train_s"] (every attempt of a resumed run) where the run stored
    it, else wall_s (runs stored before it was recorded); seeds averaged as for accuracy."""
    import pytest

    from bench.summary import metric_column, results_records, training_minutes

    ce = RunSpec("ce")
    runs = frame((ce, "CE", 60.0), (ce.replace(seed=1), "CE", 62.0), (ce.replace(seed=2), "CE", 61.0))
    runs["env_json"] = [json.dumps({"train_s": 120.0}), json.dumps({"train_s": 180.0}), json.dumps({"device": "cpu"})]
    runs["wall_s"] = [999.0, 999.0, 90.0]
    assert training_minutes(runs).tolist() == [2.0, 3.0, 1.5]
    assert results_table(runs, "minutes").loc["CE"].tolist() == ["2.17 ± 0.76 (n=3)"]
    records = results_records(runs, "minutes")
    assert records["metric"].tolist() == ["train_minutes"] and records["n"].tolist() == [3]
    with pytest.raises(BenchError, match="--metric minutes is a run's training time: it has no --group"):
        metric_column("minutes", "few")
    runs["env_json"] = [json.dumps({"train_s": 240.0, "fused": 4})] * 2 + [json.dumps({"train_s": 60.0})]
    assert training_minutes(runs).tolist() == [1.0, 1.0, 1.0]  # a fused group of 4's 4 minutes: 1 each


def test_bench_table_filters_by_method_and_cell_and_keeps_each_rows_label(tmp_path, capsys):
    import io
    import sys
    from pathlib import Path

    from bench.cli import main

    sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
    import fake_store

    path = tmp_path / "s.sqlite"
    fake_store.build(path).close()

    def records(*args):
        assert main(["table", "--store", str(path), "--format", "csv", *args]) == 0
        return pd.read_csv(io.StringIO(capsys.readouterr().out))

    every = records()
    curvenet = records("--method", "curvenet", "--cell", "cifar10:1:flip2:0.4")
    assert sorted(curvenet["method"]) == ["CurveNet [curvenet.skip_layers=0]", "CurveNet [curvenet.skip_layers=2]"]
    assert set(curvenet["cell"]) == {"cifar10 imb1 flip2:0.4"}
    mine = every[every["method"].isin(curvenet["method"]) & every["cell"].str.startswith("cifar10 imb1 flip2:0.4")]
    assert sorted(mine["mean"]) == sorted(curvenet["mean"])  # the same numbers as in the whole table
    # the 3-epoch MW-Net(imb) run (one cell) is its own row: a row never mixes settings across cells
    assert set(records("--method", "mwnet,ce")["method"]) == {"MW-Net(imb)", "MW-Net(imb) [epochs=3]",
                                                              "MW-Net(noise)"}
    assert main(["table", "--store", str(path), "--paper", "2", "--method", "ce"]) == 2
    assert "drop --method/--cell" in capsys.readouterr().err


def test_the_average_over_cells_counts_only_seeds_that_cover_every_cell(tmp_path, capsys):
    """`bench table --average`: per seed the mean over the cells, then mean ± std over the seeds
    covering all of them (Table 1's MA rule); a row that no seed completes gets none."""
    from bench.cli import main
    from bench.store import Store
    from bench.summary import cell_average, results_records

    ce, focal = RunSpec("ce"), RunSpec("focal", params=(("gamma", 1.0),))
    other = {"imbalance": 1.0, "noise_type": "none", "noise_rate": 0.0}
    runs = frame((ce, "CE", 60.0), (ce.replace(**other), "CE", 70.0),                      # seed 0: 65
                 (ce.replace(seed=1), "CE", 62.0), (ce.replace(seed=1, **other), "CE", 74.0),  # seed 1: 68
                 (ce.replace(seed=2), "CE", 10.0),                            # seed 2 misses a cell: left out
                 (focal, "Focal", 50.0))                                      # no seed covers both cells
    means = cell_average(runs, "acc_last").set_index("label")
    assert means.loc["CE", ["mean", "n", "cells"]].tolist() == [66.5, 2, 2]
    assert abs(means.loc["CE", "std"] - 2.1213) < 1e-4
    assert means.loc["Focal", "n"] == 0
    table = results_table(runs, average=True)
    assert table.columns[-1] == "mean over the 2 cells"
    assert table["mean over the 2 cells"].tolist() == ["66.50 ± 2.12 (n=2)", "—"]
    assert table.loc["CE"].tolist()[:2] == ["72.00 ± 2.83 (n=2)", "44.00 ± 29.46 (n=3)"]  # cells as before
    records = results_records(runs, average=True)
    mean_rows = records[records["cell"] == "mean over the 2 cells"]
    assert mean_rows["method"].tolist() == ["CE"] and mean_rows["mean"].tolist() == [66.5]
    assert mean_rows["dataset"].isna().all() and list(records.columns) == list(RECORD_COLUMNS)
    assert results_table(runs).shape[1] == 2  # without --average, no such column

    path = tmp_path / "s.sqlite"
    store = Store(path)
    for spec, acc in ((ce, 60.0), (ce.replace(**other), 70.0)):
        store.start(spec.key(), spec.to_dict(), "CE")
        store.finish(spec.key(), metrics={"acc_last": acc, "acc_best": acc}, history=[], env={})
    store.close()
    assert main(["table", "--store", str(path), "--average"]) == 0
    assert "| mean over the 2 cells" in capsys.readouterr().out
    assert main(["table", "--store", str(path), "--average", "--paper", "1"]) == 2
    assert "--average is for the plain table" in capsys.readouterr().err


def test_rows_trained_away_from_their_preset_are_said_under_the_table(tmp_path, capsys):
    """A table of --epochs 2 runs must not pass for the quick preset's 20 epochs: the rows whose
    runs left the preset's protocol are named under it, with the settings (a schedule --epochs
    scaled counts as the epochs alone); runs at the preset's protocol give no note."""
    import sys
    from pathlib import Path

    from bench.cli import main
    from bench.spec import PRESETS, scale_schedule
    from bench.store import Store
    from bench.summary import off_preset

    sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
    import fake_store

    plain = RunSpec(method="ce")
    short = plain.replace(**scale_schedule(PRESETS["quick"], 2))
    assert off_preset(plain.to_dict()) == {}
    assert off_preset(short.to_dict()) == {"epochs": (2, 20)}
    assert off_preset(plain.replace(lr=0.05, meta_per_class=5).to_dict()) == {
        "lr": (0.05, 0.1), "meta_per_class": (5, 20)}
    path = tmp_path / "s.sqlite"
    store = Store(path)
    fake_store.add_run(store, plain, "CE", 60.0)
    store.close()
    assert main(["table", "--store", str(path)]) == 0
    assert "note:" not in capsys.readouterr().err
    store = Store(path)
    fake_store.add_run(store, short.replace(method="focal"), "Focal", 50.0)
    fake_store.add_run(store, plain.replace(method="cb", weight_decay=1e-3), "CB", 55.0)
    store.close()
    assert main(["table", "--store", str(path)]) == 0
    err = capsys.readouterr().err
    assert ("note: rows trained away from their preset's protocol: Focal: epochs 2 (the quick preset: 20); "
            "CB: weight_decay 0.001 (the quick preset: 0.0005)") in err
    # a method setting the row's name does not show (CurveNet's P), from the run's env
    store = Store(path)
    fake_store.add_run(store, plain.replace(method="curvenet", params=(("embed_dim", 32),)), "CurveNet", 45.0,
                       env={"method_settings": {"embed_dim": [32, 64]}})
    store.close()
    assert main(["table", "--store", str(path)]) == 0
    assert "; CurveNet: curvenet.embed_dim 32 (the quick preset: 64)" in capsys.readouterr().err


def test_a_runs_env_keeps_the_method_settings_its_name_does_not_show():
    """What the note above reads: a run's method settings away from its preset's defaults, less
    those its display name shows (CurveNet's SL, MW-Net's variant); none at the defaults."""
    import methods
    from bench.execute import unnamed_settings
    from bench.spec import RunSpec
    from methods.base import params_items

    def spec(method, **sets):
        params = methods.get(method).resolve_params("quick", {k: str(v) for k, v in sets.items()})
        return RunSpec(method=method, preset="quick", params=params_items(params))

    assert unnamed_settings(spec("curvenet", embed_dim=32, skip_layers=3, drop_first=3)) == {
        "drop_first": [3, 1], "embed_dim": [32, 64]}  # the quick preset's S is 1, its P 64
    assert unnamed_settings(spec("mwnet", variant="imb")) == {}  # MW-Net(imb) says it
    assert unnamed_settings(spec("curvenet")) == {} and unnamed_settings(spec("ce")) == {}


def test_the_average_over_cells_is_the_mean_and_sample_std_of_the_per_seed_means():
    """Three seeds covering both cells, per-seed means 65, 66, 71 (mean 67.33, not the median 66;
    sample std ddof 1, statistics.stdev); a seed that misses a cell does not count."""
    import statistics

    from bench.summary import cell_average, mean_over_cells

    ce = RunSpec("ce")
    other = {"imbalance": 1.0, "noise_type": "none", "noise_rate": 0.0}
    runs = frame(*[(ce.replace(seed=s), "CE", a) for s, a in ((0, 60.0), (1, 62.0), (2, 70.0), (3, 50.0))],
                 *[(ce.replace(seed=s, **other), "CE", a) for s, a in ((0, 70.0), (1, 70.0), (2, 72.0))])
    row = cell_average(runs, "acc_last").iloc[0]
    assert (row["label"], row["n"], row["cells"]) == ("CE", 3, 2)
    assert abs(row["mean"] - statistics.mean([65.0, 66.0, 71.0])) < 1e-9
    assert abs(row["std"] - statistics.stdev([65.0, 66.0, 71.0])) < 1e-9
    seeds, ma = mean_over_cells([{0: 1.0, 1: 2.0, 2: 3.0}, {1: 4.0, 2: 5.0, 5: 0.0}, {2: 7.0, 1: 6.0}])
    assert seeds == [1, 2] and ma.tolist() == [4.0, 5.0]


def test_seeds_with_equal_values_each_count():
    """Two seeds that happen to score the same are two seeds: 60, 60, 63 is 61.00 ± 1.73 (n=3)."""
    ce = RunSpec("ce")
    runs = frame((ce, "CE", 60.0), (ce.replace(seed=1), "CE", 60.0), (ce.replace(seed=2), "CE", 63.0))
    assert results_table(runs).loc["CE"].tolist() == ["61.00 ± 1.73 (n=3)"]


def test_to_json_writes_standard_json_with_non_finite_numbers_as_null():
    import json

    import numpy as np

    from bench.summary import json_ready, to_json

    obj = {"F": float("inf"), "p": np.float64("nan"), "nested": [{"q": -np.inf, "ok": np.float32(1.5)}],
           "n": np.int64(3), "text": "x"}
    text = to_json(obj)
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text) == {"F": None, "p": None, "nested": [{"q": None, "ok": 1.5}], "n": 3, "text": "x"}
    assert json_ready({"a": np.float32("nan"), "b": np.float64(2.0)}) == {"a": None, "b": 2.0}
