"""`bench compare A B` (bench/compare.py): per cell, A − B with a t interval and p, paired over the
seeds both ran on the same data, Welch otherwise; on stores of made-up accuracies, checked against
values worked out by hand."""

import dataclasses
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
import fake_store  # noqa: E402

T_975_DF2 = 4.302653  # Student's t, 97.5 % quantile, 2 degrees of freedom (any t table)


def spec(method, seed, imbalance=10, **changes):
    params = fake_store.MWNET_PARAMS["noise"] if method == "mwnet" else {}
    s = fake_store.paper_spec(method, "cifar10", imbalance, "flip2", 0.4, seed, params)
    return dataclasses.replace(s, **changes)


def display(method):
    return {"ce": "CE", "mwnet": "MW-Net(noise)", "focal": "Focal", "cb": "Class-Balanced"}[method]


def make_store(path, runs):
    """``runs``: (method, seed, acc_last, spec changes) tuples."""
    store = Store(path)
    for method, seed, acc, changes in runs:
        fake_store.add_run(store, spec(method, seed, **changes), display(method), acc)
    store.close()
    return path


def compared(capsys, *args) -> tuple[pd.DataFrame, str]:
    assert main(["compare", *args, "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    return pd.read_csv(io.StringIO(out), keep_default_na=False, na_values=[""]), err


def test_paired_over_shared_seeds_matches_the_hand_computed_t_interval_and_p(tmp_path, capsys):
    # per-seed differences 2, 1, 4: mean 7/3, sample variance 7/3, t = sqrt(7) on 2 df, where the
    # two-sided p has the closed form 1 - t / sqrt(t^2 + 2) = 1 - sqrt(7)/3
    path = make_store(tmp_path / "s.sqlite", [("ce", 0, 70.0, {}), ("ce", 1, 72.0, {}), ("ce", 2, 75.0, {}),
                                               ("mwnet", 0, 68.0, {}), ("mwnet", 1, 71.0, {}), ("mwnet", 2, 71.0, {}),
                                               ("mwnet", 0, 50.0, {"imbalance": 100.0})])  # B alone: no row
    table, _ = compared(capsys, "ce", "mwnet", "--store", str(path))
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["test"], row["n"], row["wins"]) == ("paired", 3, "3/3")
    assert math.isclose(row["diff"], 7 / 3) and math.isclose(row["p"], 1 - math.sqrt(7) / 3, rel_tol=1e-6)
    half = T_975_DF2 * math.sqrt(7) / 3
    assert math.isclose(row["ci_low"], 7 / 3 - half, rel_tol=1e-5) and math.isclose(row["ci_high"], 7 / 3 + half,
                                                                                   rel_tol=1e-5)
    assert (row["a_n"], row["b_n"]) == (3, 3) and math.isclose(row["a_mean"], 217 / 3)
    swapped, _ = compared(capsys, "MW-Net(noise)", "CE", "--store", str(path))  # labels work as names
    assert math.isclose(swapped["diff"][0], -7 / 3) and math.isclose(swapped["p"][0], row["p"])
    assert math.isclose(swapped["ci_low"][0], -row["ci_high"]) and swapped["wins"][0] == "0/3"


def test_without_shared_data_the_comparison_is_welch(tmp_path, capsys):
    # A 70, 72, 75 (mean 217/3, var 19/3); B 60, 64 (mean 62, var 8):
    # se^2 = 19/9 + 4 = 55/9, df = (55/9)^2 / ((19/9)^2 / 2 + 16)
    runs = [("ce", s, a, {}) for s, a in ((0, 70.0), (1, 72.0), (2, 75.0))]
    path = make_store(tmp_path / "s.sqlite", runs + [("mwnet", 3, 60.0, {}), ("mwnet", 4, 64.0, {})])
    row = compared(capsys, "ce", "mwnet", "--store", str(path))[0].iloc[0]
    assert (row["test"], row["n"]) == ("Welch", 5) and pd.isna(row["wins"])
    assert math.isclose(row["diff"], 217 / 3 - 62)
    from scipy import stats
    df = (55 / 9) ** 2 / ((19 / 9) ** 2 / 2 + 16)
    t = (217 / 3 - 62) / math.sqrt(55 / 9)
    assert math.isclose(row["p"], 2 * stats.t.sf(t, df), rel_tol=1e-6)
    assert math.isclose(row["ci_high"] - row["diff"], stats.t.ppf(0.975, df) * math.sqrt(55 / 9), rel_tol=1e-6)
    # a shared seed whose data differ (B's run on --data-seed 7) is no pair either
    path = make_store(tmp_path / "d.sqlite", runs + [("mwnet", 0, 60.0, {"data_seed": 7}), ("mwnet", 1, 64.0, {})])
    assert compared(capsys, "ce", "mwnet", "--store", str(path))[0]["test"][0] == "Welch"


def test_one_pair_gives_the_difference_without_an_interval(tmp_path, capsys):
    path = make_store(tmp_path / "s.sqlite", [("ce", 0, 70.0, {}), ("mwnet", 0, 68.5, {})])
    row = compared(capsys, "ce", "mwnet", "--store", str(path))[0].iloc[0]
    assert (row["test"], row["n"], row["diff"], row["wins"]) == ("paired", 1, 1.5, "1/1")
    assert pd.isna(row["ci_low"]) and pd.isna(row["p"])
    assert main(["compare", "ce", "mwnet", "--store", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| +1.50 | —  " in out and "paired (n=1)" in out and out.startswith("CE vs MW-Net(noise)")
    assert "Holm" not in out  # one cell: nothing to correct for
    data = json.loads((main(["compare", "ce", "mwnet", "--store", str(path), "--format", "json"]),
                       capsys.readouterr().out)[1])
    assert data["rows"][0]["p"] is None and data["a"] == "CE"


def test_names_resolve_to_rows_and_bad_ones_say_what_there_is(tmp_path, capsys):
    path = make_store(tmp_path / "s.sqlite", [("ce", 0, 70.0, {}), ("ce", 0, 71.0, {"epochs": 3}),
                                               ("focal", 0, 69.0, {})])
    assert compared(capsys, "CE [epochs=3]", "focal", "--store", str(path))[0]["diff"][0] == 2.0
    for args, message in ((["ce", "focal"], "ce stands for 2 rows of the table; name one: CE [epochs=200], "
                                           "CE [epochs=3]"),
                          (["curvenet", "focal"], "no finished runs of 'curvenet'; the rows are: CE [epochs=200]"),
                          (["focal", "Focal"], "A and B are the same row (Focal)"),
                          (["focal", "CE [epochs=3]", "--confidence", "1.5"], "--confidence must lie in (0, 1)")):
        assert main(["compare", *args, "--store", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("bench: error:") and message in err, err
    assert main(["compare", "cee", "focal", "--store", str(path)]) == 2  # a typo: neither a row nor a method
    assert "unknown method or row 'cee'; the rows are: CE [epochs=200]" in capsys.readouterr().err
    # case aside, a row's label; CSV and JSON say what was compared; the runs' protocols are said
    table, err = compared(capsys, "FOCAL", "ce [epochs=3]", "--store", str(path))
    assert table.loc[0, ["a", "b", "metric", "confidence"]].tolist() == ["Focal", "CE [epochs=3]", "acc_last", 0.95]
    assert ("note: rows trained away from their preset's protocol: CE [epochs=3]: epochs 3 (the paper preset: 200), "
            "milestones 80,100 (the paper preset: 1,2), warmup_epochs 5 (the paper preset: 0)") in err
    assert "warning: Focal and CE [epochs=3] did not train with the same protocol" in err
    assert main(["compare", "focal", "CE [epochs=200]", "--store", str(path), "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["metric"] == "acc_last" and "note:" not in err and "warning" not in err


def test_a_row_is_named_without_its_qualifiers_where_that_leaves_one_row(tmp_path, capsys):
    path = tmp_path / "s.sqlite"
    store = Store(path)
    for method, shown, variant, acc in (("mwnet", "MW-Net(noise)", "noise", 50.0),
                                        ("mwnet", "MW-Net(imb)", "imb", 47.0), ("ce", "CE", None, 40.0)):
        params = fake_store.MWNET_PARAMS[variant] if variant else {}
        run = dataclasses.replace(fake_store.paper_spec(method, "cifar10", 10, "flip2", 0.4, 0, params),
                                  data_sha256="abcdef0123456789aa")  # an npz file's runs: every label qualified
        fake_store.add_run(store, run, shown, acc)
    store.close()
    table, _ = compared(capsys, "MW-Net(imb)", "CE", "--store", str(path))
    assert table.loc[0, ["a", "b", "diff"]].tolist() == ["MW-Net(imb) [data_sha256=abcdef0123456789aa]",
                                                         "CE [data_sha256=abcdef0123456789aa]", 7.0]
    assert compared(capsys, "MW-Net(noise)", "MW-Net(imb)", "--store", str(path))[0]["diff"][0] == 3.0
    assert compared(capsys, "mw-net(NOISE)", "mw-net(imb)", "--store", str(path))[0]["diff"][0] == 3.0  # case aside
    assert main(["compare", "mwnet", "ce", "--store", str(path)]) == 2  # the method: still two rows
    assert "mwnet stands for 2 rows of the table; name one: MW-Net(imb) [" in capsys.readouterr().err


def with_and_without_meta(tmp_path, method: str, without: float, with_meta: float):
    """A store with one run of ``method`` on an npz file's data without and one with the meta set."""
    data = {"data_sha256": "abcdef0123456789aa"}
    return make_store(tmp_path / "s.sqlite", [(method, 0, acc, {**data, "train_on_meta": on})
                                              for on, acc in ((False, without), (True, with_meta))])


def test_a_row_is_named_by_some_of_its_qualifiers_where_that_leaves_one_row(tmp_path, capsys):
    """'CE [train_on_meta=True]' for 'CE [data_sha256=... train_on_meta=True]' (case aside); a
    qualifier both rows share names neither."""
    path = with_and_without_meta(tmp_path, "ce", 40.0, 44.0)
    table, _ = compared(capsys, "CE [train_on_meta=True]", "ce [TRAIN_ON_META=false]", "--store", str(path))
    assert table.loc[0, ["a", "b", "diff"]].tolist() == ["CE [data_sha256=abcdef0123456789aa train_on_meta=True]",
                                                         "CE [data_sha256=abcdef0123456789aa train_on_meta=False]",
                                                         4.0]
    assert main(["compare", "CE [data_sha256=abcdef0123456789aa]", "CE [train_on_meta=True]",
                 "--store", str(path)]) == 2
    assert "CE [data_sha256=abcdef0123456789aa] stands for 2 rows of the table; name one:" in capsys.readouterr().err


def test_a_registry_name_takes_qualifiers_too(tmp_path, capsys):
    """'cb [train_on_meta=True]' for 'Class-Balanced [data_sha256=... train_on_meta=True]': the
    registry name stands where the table name does."""
    path = with_and_without_meta(tmp_path, "cb", 40.0, 43.0)
    table, _ = compared(capsys, "cb [train_on_meta=True]", "CB [train_on_meta=False]", "--store", str(path))
    assert table.loc[0, ["a", "b", "diff"]].tolist() == [
        "Class-Balanced [data_sha256=abcdef0123456789aa train_on_meta=True]",
        "Class-Balanced [data_sha256=abcdef0123456789aa train_on_meta=False]", 3.0]
    assert main(["compare", "focal [train_on_meta=True]", "cb", "--store", str(path)]) == 2
    assert "no finished runs of 'focal [train_on_meta=True]'; the rows are: Class-Balanced [" in capsys.readouterr().err
    assert main(["compare", "cb [epochs=3]", "cb", "--store", str(path)]) == 2  # a method, not these qualifiers
    assert "no finished runs of 'cb [epochs=3]'" in capsys.readouterr().err
    assert main(["compare", "cbb [train_on_meta=True]", "cb", "--store", str(path)]) == 2
    assert "unknown method or row 'cbb [train_on_meta=True]'" in capsys.readouterr().err


def test_a_table_name_with_qualifiers_keeps_to_its_own_rows(tmp_path, capsys):
    """'CurveNet [epochs=3]' is the plain CurveNet row with epochs=3, not also CurveNet(SL=3)'s, though
    both are runs of the registry method curvenet; a registry name is read only where no row shows
    the name."""
    path = tmp_path / "s.sqlite"
    store = Store(path)
    for sl, epochs, acc in ((0, 200, 40.0), (0, 3, 41.0), (3, 200, 42.0), (3, 3, 44.0)):
        run = dataclasses.replace(fake_store.paper_spec("curvenet", "cifar10", 10, "flip2", 0.4, 0,
                                                        {"skip_layers": sl}, epochs=epochs),
                                  data_sha256="abcdef0123456789aa")
        fake_store.add_run(store, run, "CurveNet(SL=3)" if sl else "CurveNet", acc)
    store.close()
    table, _ = compared(capsys, "CurveNet [epochs=3]", "CurveNet(SL=3) [epochs=3]", "--store", str(path))
    assert table.loc[0, ["a", "b", "diff"]].tolist() == ["CurveNet [data_sha256=abcdef0123456789aa epochs=3]",
                                                         "CurveNet(SL=3) [data_sha256=abcdef0123456789aa epochs=3]",
                                                         -3.0]


def test_no_shared_cell_is_said_and_is_not_an_error(tmp_path, capsys):
    path = make_store(tmp_path / "s.sqlite", [("ce", 0, 70.0, {}), ("mwnet", 0, 68.0, {"imbalance": 100.0})])
    table, err = compared(capsys, "ce", "mwnet", "--store", str(path))
    assert table.empty and "no cell where both CE and MW-Net(noise) have finished runs" in err


def test_over_several_cells_the_markdown_sums_up_who_is_ahead(tmp_path, capsys):
    path = make_store(tmp_path / "s.sqlite", [("ce", 0, 70.0, {}), ("mwnet", 0, 68.0, {}),
                                               ("ce", 0, 50.0, {"imbalance": 100.0}),
                                               ("mwnet", 0, 51.0, {"imbalance": 100.0}),
                                               ("ce", 0, 40.0, {"imbalance": 200.0}),
                                               ("mwnet", 0, 35.0, {"imbalance": 200.0})])
    assert main(["compare", "ce", "mwnet", "--store", str(path)]) == 0
    out = capsys.readouterr().out
    assert "over the 3 cells: CE ahead in 2, mean Δ +2.00 (cells weighted equally)" in out
    # Δ = +2, -1, +5: ranks 2, 1, 3; W- = 1, and 2 of the 8 sign patterns reach it: two-sided p = 0.5
    assert "Wilcoxon signed-rank test of the cells' Δ: p = 0.500 (3 cells with Δ ≠ 0: with fewer than 6" in out


def test_over_seven_cells_the_wilcoxon_test_matches_its_exact_distribution(tmp_path, capsys):
    """Δ = +1 .. +6 and -0.5: the negative Δ has the smallest rank, W- = 1; of the 2^7 sign patterns
    only 2 give W- <= 1, so the one-sided p is 2/128 and the two-sided one 4/128 = 0.03125."""
    diffs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -0.5]
    imbalances = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
    runs = [run for imb, d in zip(imbalances, diffs)
            for run in (("ce", 0, 60.0 + d, {"imbalance": imb}), ("mwnet", 0, 60.0, {"imbalance": imb}))]
    path = make_store(tmp_path / "s.sqlite", runs)
    assert main(["compare", "ce", "mwnet", "--store", str(path)]) == 0
    out = capsys.readouterr().out
    assert "over the 7 cells: CE ahead in 6, mean Δ +2.93 (cells weighted equally); Wilcoxon signed-rank test " \
           "of the cells' Δ: p = 0.031\n" in out
    assert main(["compare", "ce", "mwnet", "--store", str(path), "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)["over_cells"]
    assert summary["cells"] == 7 and summary["ahead"] == 6 and math.isclose(summary["p"], 4 / 128)
    assert math.isclose(summary["mean_diff"], sum(diffs) / 7)


def test_paired_cell_matches_scipy_and_counts_a_tied_seed_as_no_win(tmp_path, capsys):
    """Per-seed differences 1, 3, 0: Δ, its t interval (n - 1 = 2 df) and p as scipy's paired t-test
    gives them; a seed where A and B tie is not one A won; a_std and b_std are sample stds (ddof 1)."""
    import statistics

    from scipy import stats
    a, b = [70.0, 72.0, 75.0], [69.0, 69.0, 75.0]
    path = make_store(tmp_path / "s.sqlite", [("ce", s, v, {}) for s, v in enumerate(a)]
                      + [("mwnet", s, v, {}) for s, v in enumerate(b)])
    row = compared(capsys, "ce", "mwnet", "--store", str(path))[0].iloc[0]
    d = [x - y for x, y in zip(a, b)]
    half = stats.t.ppf(0.975, 2) * statistics.stdev(d) / math.sqrt(3)
    assert (row["test"], row["n"], row["wins"]) == ("paired", 3, "2/3")
    assert math.isclose(row["diff"], 4 / 3) and math.isclose(row["p"], stats.ttest_rel(a, b).pvalue, rel_tol=1e-9)
    assert math.isclose(row["ci_low"], 4 / 3 - half, rel_tol=1e-9) and math.isclose(row["ci_high"], 4 / 3 + half,
                                                                                    rel_tol=1e-9)
    assert math.isclose(row["a_std"], statistics.stdev(a)) and math.isclose(row["b_std"], statistics.stdev(b))


def test_two_pairs_already_give_an_interval_on_one_degree_of_freedom(tmp_path, capsys):
    """Differences 1 and 3: mean 2, sample std sqrt(2), sem 1; t_0.975(1 df) = 12.7062."""
    from scipy import stats
    path = make_store(tmp_path / "s.sqlite", [("ce", 0, 71.0, {}), ("ce", 1, 73.0, {}),
                                               ("mwnet", 0, 70.0, {}), ("mwnet", 1, 70.0, {})])
    row = compared(capsys, "ce", "mwnet", "--store", str(path))[0].iloc[0]
    assert (row["test"], row["n"], row["diff"]) == ("paired", 2, 2.0)
    assert math.isclose(row["ci_low"], 2 - 12.706205, rel_tol=1e-6) and math.isclose(row["ci_high"], 2 + 12.706205,
                                                                                    rel_tol=1e-6)
    assert math.isclose(row["p"], stats.ttest_rel([71.0, 73.0], [70.0, 70.0]).pvalue, rel_tol=1e-9)  # 0.2048


def test_the_same_difference_on_every_seed_gives_a_zero_width_interval_and_no_p(tmp_path, capsys):
    """No spread: the interval is the difference itself, and there is no p (not 0, not 1)."""
    path = make_store(tmp_path / "s.sqlite", [("ce", 0, 70.0, {}), ("ce", 1, 71.0, {}), ("ce", 2, 75.0, {}),
                                               ("mwnet", 0, 68.0, {}), ("mwnet", 1, 69.0, {}), ("mwnet", 2, 73.0, {})])
    row = compared(capsys, "ce", "mwnet", "--store", str(path))[0].iloc[0]
    assert (row["test"], row["diff"], row["ci_low"], row["ci_high"]) == ("paired", 2.0, 2.0, 2.0)
    assert pd.isna(row["p"])
    path = make_store(tmp_path / "w.sqlite", [("ce", 0, 70.0, {}), ("ce", 1, 70.0, {}),     # Welch, both constant
                                               ("mwnet", 5, 68.0, {}), ("mwnet", 6, 68.0, {})])
    row = compared(capsys, "ce", "mwnet", "--store", str(path))[0].iloc[0]
    assert (row["test"], row["diff"], row["ci_low"], row["ci_high"]) == ("Welch", 2.0, 2.0, 2.0)
    assert pd.isna(row["p"])


def test_welch_with_one_value_on_a_side_gives_the_difference_only_and_no_warning(tmp_path, capsys):
    import warnings
    path = make_store(tmp_path / "s.sqlite", [("ce", 0, 70.0, {}), ("ce", 1, 72.0, {}), ("ce", 2, 75.0, {}),
                                               ("mwnet", 5, 60.0, {})])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "degrees of freedom <= 0" on the user's terminal
        row = compared(capsys, "ce", "mwnet", "--store", str(path))[0].iloc[0]
    assert (row["test"], row["n"]) == ("Welch", 4) and math.isclose(row["diff"], 217 / 3 - 60)
    assert pd.isna(row["ci_low"]) and pd.isna(row["ci_high"]) and pd.isna(row["p"]) and pd.isna(row["b_std"])


def test_a_training_seed_run_on_several_data_seeds_is_no_pair_for_one_run_on_one(tmp_path, capsys):
    """A's seed 0 averages its runs on data seeds 0 and 7; B's seed 0 saw data seed 0 only: the
    two did not see the same data, so the cell is compared unpaired."""
    path = make_store(tmp_path / "s.sqlite", [("ce", 0, 70.0, {}), ("ce", 0, 72.0, {"data_seed": 7}),
                                               ("ce", 1, 73.0, {}), ("mwnet", 0, 68.0, {}), ("mwnet", 1, 69.0, {})])
    row = compared(capsys, "ce", "mwnet", "--store", str(path))[0].iloc[0]
    assert (row["test"], row["a_n"]) == ("Welch", 2) and math.isclose(row["diff"], (71.0 + 73.0) / 2 - 68.5)


def test_p_values_between_a_thousandth_and_a_hundredth_are_shown_with_three_decimals(tmp_path, capsys):
    from scipy import stats
    a, b = [71.0, 73.1, 74.9], [70.0, 72.0, 74.0]  # differences 1.0, 1.1, 0.9
    path = make_store(tmp_path / "s.sqlite", [("ce", s, v, {}) for s, v in enumerate(a)]
                      + [("mwnet", s, v, {}) for s, v in enumerate(b)]
                      + [("ce", s, 60.0 + s + 0.001 * s, {"imbalance": 100.0}) for s in range(3)]
                      + [("mwnet", s, 50.0 + s, {"imbalance": 100.0}) for s in range(3)])
    p = stats.ttest_rel(a, b).pvalue
    assert 0.001 < p < 0.01
    assert main(["compare", "ce", "mwnet", "--store", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"| {p:.3f} " in out and "| <0.001 |" in out  # the imb100 cell: differences 10, 10.001, 10.002
    table, _ = compared(capsys, "ce", "mwnet", "--store", str(path))  # Holm over 2 cells: 2 p_min, then p
    p_min = table["p"].min()
    assert table["p_holm"].tolist() == pytest.approx([p, 2 * p_min]) and 2 * p_min < p
    assert "Holm p corrects it for the number of cells" in out


def test_holm_adjusted_p_values():
    """Sorted 0.01, 0.03, 0.04 of m = 3: 3 x 0.01, then max(0.03, 2 x 0.03), then max(0.06, 1 x 0.04);
    NaN stays NaN and is not counted; 0.5 and 0.6 of m = 2: 1.0 (capped), then max(1.0, 0.6)."""
    from bench.compare import holm_adjusted

    out = holm_adjusted([0.01, 0.04, 0.03, math.nan])
    assert out[:3] == pytest.approx([0.03, 0.06, 0.06]) and math.isnan(out[3])
    assert holm_adjusted([0.5, 0.6]).tolist() == [1.0, 1.0] and len(holm_adjusted([])) == 0


def _cells_store(path, diffs):
    """One seed per cell (imbalances 1, 2, ...), A − B = ``diffs``."""
    runs = [run for imb, d in enumerate(diffs, start=1)
            for run in (("ce", 0, 60.0 + d, {"imbalance": float(imb)}), ("mwnet", 0, 60.0, {"imbalance": float(imb)}))]
    return make_store(path, runs)


def test_over_cells_cells_with_no_difference_are_neither_ahead_nor_tested(tmp_path, capsys):
    """Δ = +2, 0, -1, +5: A ahead in 2 of the 4 cells; the Wilcoxon test leaves the Δ = 0 cell out
    (over_cells' docstring; with one zero Demšar's rule, split the zeros' ranks and drop one if
    their number is odd, leaves it out too) and is scipy's exact test of the other three, p = 0.5."""
    from scipy import stats
    path = _cells_store(tmp_path / "s.sqlite", [2.0, 0.0, -1.0, 5.0])
    assert main(["compare", "ce", "mwnet", "--store", str(path), "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)["over_cells"]
    assert (summary["cells"], summary["ahead"], summary["tested"]) == (4, 2, 3)
    assert math.isclose(summary["p"], stats.wilcoxon([2.0, -1.0, 5.0]).pvalue) and math.isclose(summary["p"], 0.5)
    assert math.isclose(summary["mean_diff"], 1.5)
    assert main(["compare", "ce", "mwnet", "--store", str(path)]) == 0
    assert "p = 0.500 (3 cells with Δ ≠ 0: with fewer than 6" in capsys.readouterr().out


def test_cells_tied_in_their_difference_get_the_exact_wilcoxon_p():
    """|Δ| = 1, 1, 1, 2, 2, 3, 3, 4 (one negative): the tied ranks' exact null distribution, all 2^8
    sign flips, gives p = 8/256; the normal approximation (scipy < 1.15) gave 0.023. Δ equal up to
    the subtraction's last bits tie too."""
    import itertools

    from bench.compare import over_cells

    diffs = np.array([1.0, 1.0, -1.0, 2.0, 2.0, 3.0, 3.0, 4.0])
    ranks = np.array([2, 2, 2, 4.5, 4.5, 6.5, 6.5, 8])
    observed = min(ranks[diffs < 0].sum(), ranks[diffs > 0].sum())
    flips = [min(w, ranks.sum() - w) for w in (ranks[list(s)].sum() for s in itertools.product(*[[0, 1]] * 8)
                                                for s in [np.flatnonzero(s)])]
    exact = np.mean(np.array(flips) <= observed)
    assert exact == 8 / 256
    assert math.isclose(over_cells(pd.DataFrame({"diff": diffs}))["p"], exact)
    rounded = diffs + np.array([0, 3e-15, 0, 0, -4e-15, 0, 0, 0])  # e.g. 71.1 - 70.1 against 70.3 - 69.3
    assert math.isclose(over_cells(pd.DataFrame({"diff": rounded}))["p"], exact)


def test_over_two_cells_one_of_them_tied_there_is_no_wilcoxon_p(tmp_path, capsys):
    path = _cells_store(tmp_path / "s.sqlite", [2.0, 0.0])
    assert main(["compare", "ce", "mwnet", "--store", str(path), "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)["over_cells"]  # two cells: JSON sums them up too
    assert (summary["cells"], summary["ahead"], summary["tested"], summary["p"]) == (2, 1, 1, None)
    assert main(["compare", "ce", "mwnet", "--store", str(path)]) == 0
    assert "Wilcoxon signed-rank test of the cells' Δ: p = — (1 cells with Δ ≠ 0" in capsys.readouterr().out


def test_the_few_cells_caveat_is_said_below_six_tested_cells_only(tmp_path, capsys):
    """With 5 cells all in A's favour the exact two-sided p is 2/32 = 0.0625, its smallest; with 6
    it is 2/64 = 0.03125, so the caveat is for fewer than 6."""
    for cells, p in ((5, "0.062"), (6, "0.031")):
        path = _cells_store(tmp_path / f"s{cells}.sqlite", [float(d) for d in range(1, cells + 1)])
        assert main(["compare", "ce", "mwnet", "--store", str(path)]) == 0
        out = capsys.readouterr().out
        assert f"Wilcoxon signed-rank test of the cells' Δ: p = {p}" in out
        assert ("with fewer than 6, p cannot fall below 0.05" in out) == (cells < 6), cells


def test_the_confidence_option_sets_the_interval(tmp_path, capsys):
    from scipy import stats
    a, b = [70.0, 72.0, 75.0], [68.0, 71.0, 71.0]  # differences 2, 1, 4 (sem sqrt(7/9))
    path = make_store(tmp_path / "s.sqlite", [("ce", s, v, {}) for s, v in enumerate(a)]
                      + [("mwnet", s, v, {}) for s, v in enumerate(b)])
    row = compared(capsys, "ce", "mwnet", "--store", str(path), "--confidence", "0.8")[0].iloc[0]
    half = stats.t.ppf(0.9, 2) * math.sqrt(7 / 9)
    assert row["confidence"] == 0.8 and math.isclose(row["ci_high"] - row["diff"], half, rel_tol=1e-9)
    assert main(["compare", "ce", "mwnet", "--store", str(path), "--confidence", "0.8"]) == 0
    assert "| 80% CI" in capsys.readouterr().out


def test_a_paired_cell_shows_each_methods_mean_over_all_its_seeds(tmp_path, capsys):
    """A ran seeds 0-2, B seeds 0-1: Δ is over the two shared seeds, the A column over A's three."""
    path = make_store(tmp_path / "s.sqlite", [("ce", 0, 70.0, {}), ("ce", 1, 72.0, {}), ("ce", 2, 80.0, {}),
                                               ("mwnet", 0, 69.0, {}), ("mwnet", 1, 70.0, {})])
    row = compared(capsys, "ce", "mwnet", "--store", str(path))[0].iloc[0]
    assert (row["test"], row["n"], row["wins"], row["diff"]) == ("paired", 2, "2/2", 1.5)
    assert (row["a_n"], row["b_n"], row["a_mean"], row["b_mean"]) == (3, 2, 74.0, 69.5)


def test_seeds_only_one_row_ran_are_said_and_one_shared_seed_falls_back_to_welch(tmp_path, capsys):
    """A ran seeds 0-2, B seeds 2-4: one pair gives no interval, so the cell is Welch over all six
    values (A 70, 72, 74; B 60, 61, 62). With two shared seeds it is paired, and a note says that
    Δ is over those two while the columns are over all the seeds."""
    from scipy import stats

    a, b = [(0, 70.0), (1, 72.0), (2, 74.0)], [(2, 60.0), (3, 61.0), (4, 62.0)]
    path = make_store(tmp_path / "s.sqlite", [("ce", s, v, {}) for s, v in a] + [("mwnet", s, v, {}) for s, v in b])
    row, err = compared(capsys, "ce", "mwnet", "--store", str(path))
    assert (row["test"][0], row["n"][0], row["diff"][0]) == ("Welch", 6, 11.0)
    assert math.isclose(row["p"][0], stats.ttest_ind([70, 72, 74], [60, 61, 62], equal_var=False).pvalue)
    assert "note: Δ" not in err
    path = make_store(tmp_path / "t.sqlite", [("ce", s, v, {}) for s, v in a]
                      + [("mwnet", s, v, {}) for s, v in ((1, 60.0), (2, 61.0))])
    row, err = compared(capsys, "ce", "mwnet", "--store", str(path))
    assert (row["test"][0], row["n"][0], row["diff"][0]) == ("paired", 2, 12.5)
    assert ("note: Δ, its interval and p are over the seeds both rows ran, the CE and MW-Net(noise) columns over "
            "all of each row's seeds: cifar10 imb10 flip2:0.4 (CE 3, MW-Net(noise) 2, both 2)") in err


def test_a_difference_equal_on_every_seed_up_to_rounding_has_no_p():
    """70.3 - 70.2, 71.1 - 71.0 and 69.9 - 69.8 differ in the last bits: the t-test would read that
    as p ~ 1e-27; it is the same Δ on every seed, which has no spread to test against."""
    from bench.compare import interval

    d = np.array([70.3, 71.1, 69.9]) - np.array([70.2, 71.0, 69.8])
    assert np.ptp(d) > 0  # the rounding this test is about
    mean, low, high, p = interval(d, 0.95)
    assert math.isclose(mean, 0.1) and low == high == mean and math.isnan(p)
    assert interval(np.array([0.1, 0.1, 0.2]), 0.95)[3] < 1  # a real spread still gets its p


def test_p_values_read_as_sentences():
    from bench.compare import p_is

    assert p_is(0.0004) == "p < 0.001" and p_is(0.0316) == "p = 0.032" and p_is(math.nan) == "p = —"


def test_cells_only_one_row_has_are_named_and_the_holm_note_follows_the_confidence(tmp_path, capsys):
    path = make_store(tmp_path / "s.sqlite", [("ce", 0, 70.0, {}), ("mwnet", 0, 68.0, {}),
                                               ("ce", 0, 50.0, {"imbalance": 50.0}),
                                               ("mwnet", 0, 51.0, {"imbalance": 50.0}),
                                               ("ce", 0, 40.0, {"imbalance": 100.0}),
                                               ("mwnet", 0, 30.0, {"imbalance": 200.0})])
    assert main(["compare", "ce", "mwnet", "--store", str(path), "--confidence", "0.99"]) == 0
    out, err = capsys.readouterr()
    assert "note: 1 cell left out, where only CE has finished runs: " in err and "imb100" in err
    assert "note: 1 cell left out, where only MW-Net(noise) has finished runs: " in err and "imb200" in err
    assert "over the 2 cells" in out
    assert "Holm p lies below 0.01 differ, with at most a 1% chance" in out


def test_welch_with_each_side_the_same_up_to_rounding_gives_the_difference_only(tmp_path, capsys):
    """np.var of [60.05] * 3 is 8e-29, not 0: a Welch test against that spread printed p < 0.001
    (about 1e-55) and a zero-width interval; as for paired Δ, no spread means no test."""
    assert np.var([60.05] * 3, ddof=1) > 0
    path = make_store(tmp_path / "s.sqlite", [("ce", seed, 60.05, {}) for seed in (0, 1, 2)]
                      + [("mwnet", seed, 59.55, {}) for seed in (3, 4, 5)])
    row = compared(capsys, "ce", "mwnet", "--store", str(path))[0].iloc[0]
    assert row["test"] == "Welch" and math.isclose(row["diff"], 0.5)
    assert math.isclose(row["ci_low"], 0.5) and math.isclose(row["ci_high"], 0.5) and pd.isna(row["p"])
