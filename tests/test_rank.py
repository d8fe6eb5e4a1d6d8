"""`bench rank` (bench/rank.py): average ranks over the cells, the Friedman / Iman-Davenport test
and Nemenyi's critical difference (Demšar, JMLR 2006, §3.2.2), checked against the paper's worked
example and scipy, and on a store of made-up accuracies worked out by hand."""

import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.cli import main
from bench.rank import friedman_nemenyi, holm_versus_control
from bench.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
import fake_store  # noqa: E402

# Per-data-set ranks (1 = best) of four classifiers over 14 data sets with the average ranks of
# Demšar's example (§3.2.2, his Table 6): 3.143, 2.000, 2.893, 1.964. The test feeds minus the
# ranks as values, so the code ranks them again itself (ties included).
EXAMPLE_RANKS = [
    (4, 3, 1.5, 1.5), (1, 2, 3, 4), (4, 1, 2, 3), (4, 1, 3, 2), (4, 2, 3, 1), (1, 2.5, 4, 2.5), (3, 2, 4, 1),
    (2.5, 2.5, 4, 1), (4, 3, 2, 1), (2.5, 2.5, 2.5, 2.5), (4, 2.5, 1, 2.5), (3, 2, 4, 1), (4, 1, 2.5, 2.5),
    (3, 1, 4, 2)]


def test_demsars_worked_example():
    """§3.2.2's example: from average ranks 3.143, 2.000, 2.893, 1.964, chi2_F = 9.28, F_F = 3.69 (the
    critical F(3, 39) at 0.05 is 2.85: rejected); CD = 2.569 sqrt(4 * 5 / (6 * 14)) = 1.25 at 0.05,
    where no pair differs (C4.5 vs C4.5+m+cf: 1.18), and 1.12 at 0.10 (q = 2.291, Table 5b), which the
    gaps of C4.5+m+cf (1.18) and C4.5+m (1.14) to C4.5 exceed."""
    table = -pd.DataFrame(EXAMPLE_RANKS, columns=["C4.5", "C4.5+m", "C4.5+cf", "C4.5+m+cf"], dtype=float)
    result = friedman_nemenyi(table, alpha=0.05)
    assert result["average_rank"].round(3).tolist() == [3.143, 2.000, 2.893, 1.964]
    assert round(result["chi2"], 2) == 9.28 and round(result["F"], 2) == 3.69 and result["df"] == (3, 39)
    assert result["p"] < 0.05 and stats.f.ppf(0.95, 3, 39) == pytest.approx(2.85, abs=0.005)
    assert round(result["q"], 3) == 2.569 and round(result["cd"], 2) == 1.25 and result["differ"] == []
    looser = friedman_nemenyi(table, alpha=0.10)
    assert round(looser["q"], 3) == 2.291 and round(looser["cd"], 2) == 1.12
    assert [(b, w) for b, w, _ in looser["differ"]] == [("C4.5+m+cf", "C4.5"), ("C4.5+m", "C4.5")]


def test_holm_against_a_control_on_demsars_example():
    """§3.2.2's example with C4.5 as the control: SE = sqrt(4 * 5 / (6 * 14)) = 0.488; z = -2.42
    (C4.5+m+cf, p = 0.016 < 0.05/3), -2.34 (C4.5+m, p = 0.019 < 0.05/2) and -0.51 (C4.5+cf, p =
    0.608 > 0.05): Holm rejects the first two, where Nemenyi's CD (1.25, above) finds no pair; the
    Bonferroni-Dunn q for k = 4 is 2.394 (Demšar's Table 5b), CD = 1.17."""
    table = -pd.DataFrame(EXAMPLE_RANKS, columns=["C4.5", "C4.5+m", "C4.5+cf", "C4.5+m+cf"], dtype=float)
    ranks = friedman_nemenyi(table)["average_rank"]
    result = holm_versus_control(ranks, "C4.5", 14, alpha=0.05)
    assert round(result["se"], 3) == 0.488 and round(result["q"], 3) == 2.394 and round(result["cd"], 2) == 1.17
    rows = result["rows"]
    assert [r["method"] for r in rows] == ["C4.5+m+cf", "C4.5+m", "C4.5+cf"]
    assert [round(r["z"], 2) for r in rows] == [-2.42, -2.34, -0.51]
    assert [round(r["p"], 3) for r in rows] == [0.016, 0.019, 0.608]
    assert [round(r["holm_alpha"], 4) for r in rows] == [0.0167, 0.025, 0.05]
    assert [r["differs"] for r in rows] == [True, True, False]
    # adjusted: 3 x 0.0157, then max(that, 2 x 0.0192) = 0.047 (monotone), then 0.608
    assert [r["p_holm"] for r in rows] == pytest.approx([3 * rows[0]["p"], 3 * rows[0]["p"], rows[2]["p"]])


def test_holm_stops_at_the_first_hypothesis_it_keeps():
    """p = 0.02 and 0.02 against thresholds 0.05/3 and 0.05/2: the first is kept, so the second is
    too, though 0.02 < 0.025; with the first at p = 0.01 both are rejected."""
    se = math.sqrt(4 * 5 / (6 * 14))
    z02, z01 = stats.norm.isf(0.01), stats.norm.isf(0.005)
    ranks = pd.Series({"control": 1.0, "a": 1 + z02 * se, "b": 1 + z02 * se, "c": 1.1})
    assert [r["differs"] for r in holm_versus_control(ranks, "control", 14)["rows"]] == [False, False, False]
    ranks["a"] = 1 + z01 * se
    rows = holm_versus_control(ranks, "control", 14)["rows"]
    assert [(r["method"], r["differs"]) for r in rows] == [("a", True), ("b", True), ("c", False)]
    assert [r["p_holm"] < 0.05 for r in rows] == [True, True, False]  # rejected exactly below alpha
    assert rows[1]["p"] == pytest.approx(0.02) and rows[0]["z"] > 0  # ranked below the control: z > 0


def test_friedman_statistic_is_scipys_without_ties_and_f_f_follows_it():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(12, 5)) + np.arange(5) * 0.3
    result = friedman_nemenyi(pd.DataFrame(values, columns=list("abcde")))
    assert result["chi2"] == pytest.approx(stats.friedmanchisquare(*values.T).statistic, rel=1e-12)
    f_f = 11 * result["chi2"] / (12 * 4 - result["chi2"])
    assert result["F"] == pytest.approx(f_f) and result["p"] == pytest.approx(stats.f.sf(f_f, 4, 44))
    assert result["average_rank"]["e"] < result["average_rank"]["a"]  # higher values rank first


def test_the_same_order_in_every_cell_rejects_with_certainty_and_lists_the_pairs_past_cd():
    table = pd.DataFrame([[3.0, 2.0, 1.0]] * 8, columns=["best", "middle", "worst"])
    result = friedman_nemenyi(table)
    assert result["average_rank"].tolist() == [1.0, 2.0, 3.0]
    assert result["F"] == math.inf and result["p"] == 0.0
    cd = 2.343 * math.sqrt(3 * 4 / (6 * 8))  # Demšar's Table 5a, k = 3: 1.17
    assert result["cd"] == pytest.approx(cd, abs=1e-3)
    assert result["differ"] == [("best", "worst", 2.0)]  # 1.0 apart is less than CD


def test_an_incomplete_table_is_refused():
    with pytest.raises(ValueError):
        friedman_nemenyi(pd.DataFrame([[1.0, np.nan], [2.0, 1.0]], columns=["a", "b"]))


# ------------------------------------------------------------------------------ the command

DISPLAY = {"ce": "CE", "mwnet": "MW-Net(noise)", "focal": "Focal"}


def make_store(path, accuracies):
    """``accuracies``: {imbalance: {method: [acc per seed]}}; CIFAR-10 flip2 0.4 cells."""
    store = Store(path)
    for imbalance, by_method in accuracies.items():
        for method, values in by_method.items():
            params = fake_store.MWNET_PARAMS["noise"] if method == "mwnet" else {}
            for seed, acc in enumerate(values):
                spec = fake_store.paper_spec(method, "cifar10", imbalance, "flip2", 0.4, seed, params)
                fake_store.add_run(store, spec, DISPLAY[method], acc)
    store.close()
    return path


ACCURACIES = {  # per cell, the methods' seed means: CE 12 / 15 / 13, MW-Net 14 / 14 / 16, Focal 11 / 13 / 10
    10: {"ce": [11.0, 13.0], "mwnet": [14.0], "focal": [11.0]},
    50: {"ce": [15.0], "mwnet": [14.0], "focal": [13.0]},
    100: {"ce": [13.0], "mwnet": [15.0, 17.0], "focal": [10.0]},
    200: {"ce": [12.0], "mwnet": [13.0]},  # Focal has no run here: the cell is left out
}


def test_rank_over_a_store_by_hand(tmp_path, capsys):
    """Ranks per cell (1 = best): imb 10: MW-Net 1, CE 2, Focal 3; imb 50: CE 1, MW-Net 2, Focal 3;
    imb 100: MW-Net 1, CE 2, Focal 3; so MW-Net 4/3, CE 5/3, Focal 3; the imb 200 cell is left out."""
    path = make_store(tmp_path / "s.sqlite", ACCURACIES)
    assert main(["rank", "--store", str(path), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["method"]: r for r in out["rows"]}
    assert [r["method"] for r in out["rows"]] == ["MW-Net(noise)", "CE", "Focal"]
    assert rows["MW-Net(noise)"]["average_rank"] == pytest.approx(4 / 3)
    assert rows["CE"]["average_rank"] == pytest.approx(5 / 3) and rows["Focal"]["average_rank"] == 3.0
    assert rows["MW-Net(noise)"]["mean"] == pytest.approx((14 + 14 + 16) / 3) and rows["CE"]["first"] == 1
    assert out["cells"] == 3 and out["methods"] == 3 and len(out["cells_left_out"]) == 1
    assert "200" in out["cells_left_out"][0]
    chi2 = 12 * 3 / (3 * 4) * ((4 / 3) ** 2 + (5 / 3) ** 2 + 9 - 3 * 16 / 4)
    assert out["chi2"] == pytest.approx(chi2) and out["df"] == [2, 4]
    assert main(["rank", "ce", "Focal", "mwnet", "--store", str(path)]) == 0
    text, err = capsys.readouterr()
    assert "| MW-Net(noise) | 1.33" in text and "Iman-Davenport" in text
    assert "1 cell left out" in err and "imb200" in err.replace(" ", "") and "few" in err


def test_rank_against_a_control_by_hand(tmp_path, capsys):
    """Against MW-Net (average rank 4/3) over 3 cells, k = 3: SE = sqrt(3 * 4 / 18); Focal (3) z =
    (5/3) / SE = 2.04, p = 0.041, CE (5/3) z = 0.41, p = 0.683. The Friedman test rejects at 0.05 (F(2,
    4) = 7, p = 1 / 20.25 = 0.049); at 0.05 Holm's first threshold is 0.025, so neither differs; at
    0.10 (0.05, then 0.10) Focal does; at 0.04 the Friedman test does not reject: no verdict."""
    path = make_store(tmp_path / "s.sqlite", ACCURACIES)
    assert main(["rank", "--control", "mwnet", "--store", str(path), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["p"] == pytest.approx(1 / 20.25) and out["control"]["drawn"] is True
    se = math.sqrt(3 * 4 / 18)
    holm = {r["method"]: r for r in out["control"]["holm"]}
    assert out["control"]["method"] == "MW-Net(noise)" and out["control"]["se"] == pytest.approx(se)
    assert holm["Focal"]["z"] == pytest.approx(5 / 3 / se) and holm["CE"]["z"] == pytest.approx(1 / 3 / se)
    assert holm["Focal"]["p"] == pytest.approx(2 * stats.norm.sf(5 / 3 / se))
    assert [r["method"] for r in out["control"]["holm"]] == ["Focal", "CE"]
    assert not holm["Focal"]["differs"] and holm["Focal"]["holm_alpha"] == 0.025
    rows = {r["method"]: r for r in out["rows"]}
    assert rows["Focal"]["differs_vs_control"] is False and rows["MW-Net(noise)"]["z_vs_control"] is None
    assert main(["rank", "ce", "focal", "--control", "MW-Net", "--alpha", "0.1", "--store", str(path)]) == 0
    text = capsys.readouterr().out
    assert "against the control MW-Net(noise)" in text and "| Focal  " in text
    assert "yes: below MW-Net(noise)" in text and text.count("| no ") == 1 and "Bonferroni-Dunn" in text
    assert "Nemenyi" not in text
    assert main(["rank", "--control", "mwnet", "--alpha", "0.04", "--store", str(path)]) == 0
    text = capsys.readouterr().out
    assert text.count("not drawn") == 2 and "no verdict is drawn" in text
    assert main(["rank", "--control", "mwnet", "--alpha", "0.04", "--store", str(path), "--format", "csv"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out)).set_index("method")
    assert table["differs_vs_control"].isna().all() and table.loc["Focal", "holm_alpha_vs_control"] == 0.02


def test_rank_of_separation_leaves_out_rows_without_trust_and_counts_shared_firsts(tmp_path, capsys):
    """Two cells of the fake pool: CurveNet's weights (0.9 clean, 0.2 noisy) and O2U-Net's score
    (high for noise) both separate perfectly (noise AUROC 100: tied first, rank 1.5 in each cell),
    MW-Net's weight falls with a loss that is high for noise and tail alike; CE keeps no trust."""
    path = tmp_path / "s.sqlite"
    store = Store(path)
    for imbalance in (8, 16):
        clean, noisy, _ = fake_store.fake_samples(0)
        loss = np.where(noisy | np.isin(clean, [2, 3]), 2.0, 0.3) + np.random.default_rng(imbalance).normal(0, 0.1, 75)
        fake_store.add_fake_trust_run(store, "curvenet", "CurveNet", {"weight": np.where(noisy, 0.2, 0.9)},
                                      imbalance=imbalance)
        fake_store.add_fake_trust_run(store, "mwnet", "MW-Net(noise)", {"weight": 1 / (1 + loss)}, imbalance=imbalance)
        fake_store.add_fake_trust_run(store, "o2u", "O2U-Net", {"score": np.where(noisy, 3.0, 1.0)},
                                      imbalance=imbalance)
        fake_store.add_fake_trust_run(store, "ce", "CE", {}, imbalance=imbalance)
    store.close()
    assert main(["rank", "--metric", "noise_auroc", "--store", str(path), "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert "left out, as they have no noise_auroc value" in err and "CE" in err
    result = json.loads(out)
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"CurveNet", "MW-Net(noise)", "O2U-Net"} and result["metric"] == "noise_auroc"
    assert rows["CurveNet"]["average_rank"] == 1.5 and rows["O2U-Net"]["mean"] == 100.0
    assert rows["CurveNet"]["first"] == 0 and rows["CurveNet"]["first_tied"] == 2
    assert rows["MW-Net(noise)"]["average_rank"] == 3.0 and rows["MW-Net(noise)"]["first_tied"] == 0
    assert main(["rank", "--metric", "tail_auroc", "--store", str(path)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("average ranks over 2 cells (1 = best in a cell; tail AUROC (%)") and "0/2 (+2 tied)" in text
    assert main(["rank", "ce", "curvenet", "o2u", "--metric", "noise_auroc", "--store", str(path)]) == 2
    assert "no noise_auroc value for CE (it needs a per-sample weight or selection score" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["ce", "mwnet"], "at least 3 rows, got 2"),
    (["--control", "nope"], "unknown method or row 'nope'"),
    (["ce", "mwnet", "CE"], "named twice: CE"),
    (["--alpha", "1"], "--alpha must lie in (0, 1)"),
    (["ce", "mwnet", "nope"], "unknown method or row 'nope'"),
])
def test_bad_requests_are_one_line_errors(tmp_path, capsys, args, message):
    path = make_store(tmp_path / "s.sqlite", ACCURACIES)
    assert main(["rank", *args, "--store", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_too_few_complete_cells_is_said(tmp_path, capsys):
    path = make_store(tmp_path / "s.sqlite", {10: ACCURACIES[10], 200: ACCURACIES[200]})
    assert main(["rank", "--store", str(path)]) == 2
    assert "1 cell where all of CE, Focal, MW-Net(noise) have a finished run (acc_last); ranking needs at least 2: " \
        "name fewer rows" in capsys.readouterr().err
    path = make_store(tmp_path / "one.sqlite", {10: ACCURACIES[10]})  # every row there: fewer rows cannot help
    assert main(["rank", "--store", str(path)]) == 2
    assert "ranking needs at least 2: train the rows on more cells" in capsys.readouterr().err


# ------------------------------------------------------------------ the critical difference diagram

def test_nemenyi_groups_on_demsars_example():
    """At alpha 0.10 (CD 1.12) C4.5+m+cf, C4.5+m and C4.5+cf lie within CD of each other, and
    C4.5+cf and C4.5 (gap 0.25), but not C4.5+m and C4.5 (1.14): two lines, as in Demšar's Fig. 1;
    at 0.05 (CD 1.25) one line joins all four."""
    from bench.cd_diagram import nemenyi_groups

    table = -pd.DataFrame(EXAMPLE_RANKS, columns=["C4.5", "C4.5+m", "C4.5+cf", "C4.5+m+cf"], dtype=float)
    looser = friedman_nemenyi(table, alpha=0.10)
    assert nemenyi_groups(looser["average_rank"], looser["cd"]) == [["C4.5+m+cf", "C4.5+m", "C4.5+cf"],
                                                                     ["C4.5+cf", "C4.5"]]
    strict = friedman_nemenyi(table, alpha=0.05)
    assert nemenyi_groups(strict["average_rank"], strict["cd"]) == [["C4.5+m+cf", "C4.5+m", "C4.5+cf", "C4.5"]]
    apart = pd.Series({"a": 1.0, "b": 3.0, "c": 5.0})
    assert nemenyi_groups(apart, 2.0) == [] and nemenyi_groups(apart, 2.01) == [["a", "b"], ["b", "c"]]


def test_rank_plot_draws_the_diagram_beside_any_format(tmp_path, capsys):
    import matplotlib

    path = make_store(tmp_path / "s.sqlite", ACCURACIES)
    out = tmp_path / "figs" / "cd.svg"
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text as text, to read it back
        assert main(["rank", "--control", "mwnet", "--alpha", "0.1", "--store", str(path), "--plot", str(out),
                     "--format", "json"]) == 0
    stdout, err = capsys.readouterr()
    assert json.loads(stdout)["control"]["method"] == "MW-Net(noise)" and f"figure: {out}" in err
    svg = out.read_text()
    assert "Focal * (3.00)" in svg and "CE (1.67)" in svg and "MW-Net(noise) (1.33)" in svg
    assert "Holm against MW-Net(noise) (* differs) at alpha 0.1" in svg and "Bonferroni-Dunn CD" in svg
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        assert main(["rank", "--alpha", "0.04", "--store", str(path), "--plot", str(out)]) == 0
    svg = out.read_text()
    assert "no test drawn" in svg and "CD =" not in svg and "Focal (3.00)" in svg
    assert main(["rank", "--store", str(path), "--plot", str(tmp_path / "cd")]) == 0
    assert (tmp_path / "cd.png").stat().st_size > 0 and "figure:" in capsys.readouterr().err
    assert main(["rank", "--store", str(path), "--plot", str(tmp_path / "cd.nope")]) == 2
    assert "matplotlib cannot write .nope files" in capsys.readouterr().err


def test_a_figure_that_cannot_be_written_is_one_line_after_the_table(tmp_path, capsys, monkeypatch):
    """The output is checked before anything is computed (a folder, a file as its parent, no
    name); a failure while writing (a full disk, a read-only mount) comes after the table, which
    it does not cost."""
    path = make_store(tmp_path / "s.sqlite", ACCURACIES)
    (tmp_path / "plain").write_text("a file")
    for plot, message in ((str(tmp_path) + "/", "is a folder; give a file name in it"),
                          (str(tmp_path), "is a folder"),
                          (str(tmp_path / "plain" / "cd.png"), "is a file, not a directory"),
                          ("", "--plot needs a file name")):
        assert main(["rank", "--store", str(path), "--plot", plot]) == 2
        out, err = capsys.readouterr()
        assert out == "" and message in err and err.count("\n") == 1, err
    import matplotlib.figure

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_disk)
    assert main(["rank", "--store", str(path), "--plot", str(tmp_path / "figs" / "cd.png")]) == 2
    out, err = capsys.readouterr()
    assert out.startswith("average ranks over 3 cells") and "Friedman test" in out
    assert f"bench: error: cannot write the figure {tmp_path / 'figs' / 'cd.png'}: No space left on device" in err


def test_infinite_statistics_are_null_in_the_json(tmp_path, capsys):
    """The same order in every cell makes the Iman-Davenport F infinite: JSON has no Infinity
    (JavaScript's JSON.parse refuses it), so it is null, as NaN is."""
    path = make_store(tmp_path / "s.sqlite", {i: {"ce": [3.0], "mwnet": [2.0], "focal": [1.0]} for i in (10, 50, 100)})
    assert main(["rank", "--store", str(path), "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert "Infinity" not in out and "NaN" not in out
    result = json.loads(out)
    assert result["F"] is None and result["p"] == 0.0


def test_a_named_control_without_trust_is_refused_before_the_others_are_read(tmp_path, capsys, monkeypatch):
    path = tmp_path / "s.sqlite"
    store = Store(path)
    clean, noisy, _ = fake_store.fake_samples(0)
    fake_store.add_fake_trust_run(store, "curvenet", "CurveNet", {"weight": np.where(noisy, 0.2, 0.9)})
    fake_store.add_fake_trust_run(store, "o2u", "O2U-Net", {"score": np.where(noisy, 3.0, 1.0)})
    fake_store.add_fake_trust_run(store, "ce", "CE", {})
    fake_store.add_fake_trust_run(store, "focal", "Focal", {})
    store.close()
    import bench.compare

    read = []
    real = bench.compare.with_separation
    monkeypatch.setattr(bench.compare, "with_separation", lambda store, runs, progress=None: (
        read.extend(runs["display_name"]), real(store, runs, progress))[1])
    assert main(["rank", "--metric", "noise_auroc", "--control", "ce", "--store", str(path)]) == 2
    err = capsys.readouterr().err
    assert "no noise_auroc value for CE (" in err and "Focal" not in err.split("(")[0]
    assert read == ["CE"]  # only the control's runs were read before refusing


def test_equal_cell_means_tie_whatever_the_summations_last_bits(tmp_path, capsys):
    """CE and Focal score the same three values in another seed order on imb 10 (both 62.28 in
    `bench table`; pandas' means of the two differ in the last bit): they share ranks 1 and 2
    there (1.5 each), and the cell is a shared first."""
    path = make_store(tmp_path / "s.sqlite", {10: {"ce": [68.85, 61.74, 56.24], "focal": [61.74, 68.85, 56.24],
                                                   "mwnet": [40.0]},
                                              50: {"ce": [20.0], "focal": [10.0], "mwnet": [30.0]}})
    assert main(["rank", "--store", str(path), "--format", "json"]) == 0
    rows = {r["method"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert rows["CE"]["average_rank"] == (1.5 + 2) / 2 and rows["Focal"]["average_rank"] == (1.5 + 3) / 2
    assert (rows["CE"]["first"], rows["CE"]["first_tied"]) == (0, 1) and rows["Focal"]["first_tied"] == 1
