"""`bench rank` (bench/rank.py): average ranks over the cells, the Friedman / Iman-Davenport test
and Nemenyi's critical difference (Demšar, JMLR 2006, §3.2.2), checked against the paper's worked
example and scipy, and on a store of made-up accuracies worked out by hand."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.cli import main
from bench.rank import friedman_nemenyi
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


@pytest.mark.parametrize("args, message", [
    (["ce", "mwnet"], "at least 3 rows, got 2"),
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
    assert "1 cell where all of CE, Focal, MW-Net(noise) have a finished run (acc_last); ranking needs at least 2" \
        in capsys.readouterr().err
