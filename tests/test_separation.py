"""Separation of clean and mislabelled samples by a method's per-sample trust (bench/analysis.py):
the AUROCs by hand, the tail classes, the loss-based failure they are built to show, and
`bench table` / `bench compare` / `bench show` on the fake store (made-up records, nothing trained)."""

import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.analysis import run_separation, separation, tail_classes
from bench.cli import main
from bench.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
import fake_store  # noqa: E402


def test_tail_classes_are_the_half_with_fewest_clean_samples_and_none_without_imbalance():
    assert tail_classes(np.repeat([0, 1, 2, 3], [40, 20, 10, 5])).tolist() == [2, 3]
    assert tail_classes(np.repeat([0, 1, 2], [10, 5, 1])).tolist() == [2]  # floor(3 / 2) classes
    assert tail_classes(np.repeat([0, 1, 2, 3], [10, 5, 5, 5])).tolist() == [2, 3]  # ties: the later classes
    assert tail_classes(np.repeat([0, 1, 2, 3], [7, 7, 7, 7])).tolist() == []
    assert tail_classes(np.repeat([3, 1], [5, 9])).tolist() == [3]  # labels, not positions


def test_the_aurocs_by_hand():
    clean = np.array([0, 0, 0, 0, 1, 1])  # class 1 (2 samples) is the tail
    noisy = np.array([False, False, True, False, False, True])
    trust = np.array([0.9, 0.8, 0.1, 0.7, 0.3, 0.5])
    s = separation(clean, noisy, trust)
    # clean 0.9, 0.8, 0.7, 0.3 against mislabelled 0.1, 0.5: 7 of the 8 pairs ordered right
    assert s["noise_auroc"] == pytest.approx(100 * 7 / 8)
    # the one clean tail sample (0.3) against both mislabelled ones: above 0.1, below 0.5
    assert s["tail_auroc"] == pytest.approx(50.0)
    assert (s["noisy"], s["clean"], s["clean_tail"], s["tail"]) == (2, 4, 1, [1])
    assert (s["mean_clean"], s["mean_noisy"], s["mean_clean_tail"]) == pytest.approx((0.675, 0.3, 0.3))
    assert separation(clean, noisy, np.ones(6))["noise_auroc"] == 50.0  # ties count one half
    missing = separation(clean, noisy, np.array([0.9, 0.8, 0.1, np.nan, np.nan, 0.5]))  # left out
    assert missing["noise_auroc"] == 100.0 and math.isnan(missing["tail_auroc"])  # 0.9, 0.8 vs 0.1, 0.5
    assert math.isnan(separation(clean, np.zeros(6, bool), trust)["noise_auroc"])  # no noise
    assert math.isnan(separation(np.repeat([0, 1], 3), noisy, trust)["tail_auroc"])  # no imbalance


def test_a_loss_based_weight_tells_noise_from_the_head_but_not_from_the_clean_tail():
    """CurveNet's premise (Sec. 1): mislabelled and clean tail samples both have large losses, so a
    weight that falls with the loss separates noise overall but ranks the clean tail with it."""
    rng = np.random.default_rng(0)
    clean = np.repeat(np.arange(4), [400, 200, 50, 20])
    noisy = rng.random(len(clean)) < 0.3
    loss = np.where(noisy, 2.0, np.where(clean >= 2, 2.0, 0.3)) + rng.normal(0, 0.2, len(clean))
    by_loss = separation(clean, noisy, -loss)
    assert by_loss["noise_auroc"] > 75 and 35 < by_loss["tail_auroc"] < 65
    knows_noise = separation(clean, noisy, np.where(noisy, 0.1, 0.9) + rng.normal(0, 0.05, len(clean)))
    assert knows_noise["noise_auroc"] > 99 and knows_noise["tail_auroc"] > 99


@pytest.fixture
def trust_store(tmp_path):
    """Fake CurveNet (weights 0.9 clean / 0.2 noisy), a fake MW-Net whose weight falls with a fake
    loss that is high for the tail, a fake O2U-Net whose score is high for noise, a fake CE (no
    record): all on the fake pool of 4 classes (40/20/10/5 samples), 2 seeds each."""
    path = tmp_path / "s.sqlite"
    store = Store(path)
    for seed in (0, 1):
        rng = np.random.default_rng(10 + seed)
        clean, noisy, _ = fake_store.fake_samples(seed)
        tail = np.isin(clean, [2, 3])
        fake_store.add_fake_trust_run(store, "curvenet", "CurveNet", {"weight": np.where(noisy, 0.2, 0.9)}, seed=seed)
        loss = np.where(noisy | tail, 2.0, 0.3) + rng.normal(0, 0.1, len(clean))
        fake_store.add_fake_trust_run(store, "mwnet", "MW-Net(noise)", {"weight": 1 / (1 + loss)}, seed=seed)
        fake_store.add_fake_trust_run(store, "o2u", "O2U-Net", {"score": np.where(noisy, 3.0, 1.0),
                                                                "kept": ~noisy | (np.arange(75) % 2 == 0)}, seed=seed)
        fake_store.add_fake_trust_run(store, "ce", "CE", {}, seed=seed)
    store.close()
    return path


def table(capsys, *args) -> pd.DataFrame:
    assert main(["table", *args, "--format", "csv"]) == 0
    return pd.read_csv(io.StringIO(capsys.readouterr().out)).set_index("method")


def test_bench_table_shows_each_methods_separation_over_seeds(trust_store, capsys):
    noise = table(capsys, "--store", str(trust_store), "--metric", "noise_auroc")
    assert sorted(noise.index) == ["CurveNet", "MW-Net(noise)", "O2U-Net"]  # CE records no trust
    assert noise.loc["CurveNet", "mean"] == 100.0 and noise.loc["O2U-Net", "mean"] == 100.0  # score: minus
    assert set(noise["n"]) == {2} and set(noise["metric"]) == {"noise_auroc"}
    tail = table(capsys, "--store", str(trust_store), "--metric", "tail_auroc")
    assert tail.loc["CurveNet", "mean"] == 100.0
    assert tail.loc["MW-Net(noise)", "mean"] < 60 < noise.loc["MW-Net(noise)", "mean"]
    # each value is the run's own, as bench.analysis computes it from the store
    store = Store(trust_store, create=False)
    runs = store.runs()
    by_hand = [run_separation(store, k)["tail_auroc"] for k in runs[runs["method"] == "mwnet"]["key"]]
    assert tail.loc["MW-Net(noise)", "mean"] == pytest.approx(np.mean(by_hand), abs=1e-4)
    assert main(["table", "--store", str(trust_store), "--metric", "noise_auroc"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("noise AUROC (%)") and "100.00 ± 0.00 (n=2)" in out


def test_bench_compare_and_show_read_the_same_separation(trust_store, capsys):
    assert main(["compare", "curvenet", "mwnet", "--store", str(trust_store), "--metric", "tail_auroc",
                 "--format", "json"]) == 0
    [row] = json.loads(capsys.readouterr().out)["rows"]
    assert row["test"] == "paired" and row["n"] == 2 and row["diff"] > 40
    key = Store(trust_store, create=False).runs().query("method == 'o2u' and seed == 0")["key"].iloc[0]
    assert main(["show", key, "--store", str(trust_store), "--format", "json"]) == 0
    sep = json.loads(capsys.readouterr().out)["separation"]
    clean, noisy, _ = fake_store.fake_samples(0)
    removed = ~(~noisy | (np.arange(75) % 2 == 0))
    assert sep["record"] == "score" and sep["noise_auroc"] == 100.0 and sep["tail"] == [2, 3]
    assert sep["removed"] == removed.sum() and sep["precision"] == 1.0
    assert sep["recall"] == pytest.approx(removed.sum() / noisy.sum())
    assert main(["show", key, "--store", str(trust_store)]) == 0
    assert "separate  noise AUROC 100.0%" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--metric", "noise_auroc", "--group", "few"], "no --group"),
    (["--metric", "tail_auroc", "--paper", "1"], "is for the plain table"),
])
def test_bad_separation_requests_are_one_line(trust_store, capsys, args, message):
    assert main(["table", "--store", str(trust_store), *args]) == 2
    assert message in capsys.readouterr().err


def test_a_store_without_trust_records_says_why_the_table_is_empty(tmp_path, capsys):
    path = tmp_path / "s.sqlite"
    store = fake_store.build(path)
    fake_store.add_fake_trust_run(store, "ce", "CE", {})  # per-sample rows, no weight or score
    store.close()
    assert main(["table", "--store", str(path), "--metric", "noise_auroc"]) == 0
    assert "has a noise_auroc: it needs a per-sample weight or selection score" in capsys.readouterr().out


def test_reading_skips_noise_free_runs_and_reports_progress_every_hundred_runs():
    from bench.analysis import with_separation

    clean, noisy, _ = fake_store.fake_samples(0)
    record = pd.DataFrame({"clean_label": clean, "observed_label": clean, "is_noisy": noisy,
                           "value": np.where(noisy, 0.1, 0.9)})

    class Records:  # a store with one weight record per run, counting what is read
        read = []

        def sample_record(self, key, name):
            self.read.append((key, name))
            return record if name == "weight" else None

    # every fifth run noise-free, and one in ten on a dataset's own noisy labels (noise real, rate 0)
    kinds = ["none" if i % 5 == 0 else "real" if i % 10 == 1 else "flip2" for i in range(250)]
    runs = pd.DataFrame({"key": [f"k{i}" for i in range(250)], "noise_type": kinds,
                         "noise_rate": [0.4 if kind == "flip2" else 0.0 for kind in kinds]})
    seen = []
    out = with_separation(Records(), runs, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(100, 250), (200, 250)]
    noisy = runs["noise_type"] != "none"
    assert len(Records.read) == 200 and {key for key, _ in Records.read} == set(runs["key"][noisy])
    assert out["noise_auroc"][noisy].eq(100.0).all()
    assert out["noise_auroc"][~noisy].isna().all() and list(out.index) == list(runs.index)


def test_the_separation_figure_has_a_panel_per_method_with_trust_and_its_groups(trust_store, tmp_path, capsys):
    from bench.plots import separation_panels

    store = Store(trust_store, create=False)
    panels = separation_panels(store, store.runs("done"), seed=1)
    assert [p["label"] for p in panels] == ["CurveNet", "MW-Net(noise)", "O2U-Net"]  # CE records no trust
    assert {int(p["run"]["seed"]) for p in panels} == {1}
    clean, noisy, _ = fake_store.fake_samples(1)
    tail = np.isin(clean, [2, 3])
    sizes = {g: len(v) for g, v in panels[0]["groups"].items()}
    assert sizes == {"clean, head": (~noisy & ~tail).sum(), "clean, tail": (~noisy & tail).sum(),
                     "mislabelled": noisy.sum()}
    assert set(panels[0]["groups"]["mislabelled"]) == {0.2} and set(panels[2]["groups"]["mislabelled"]) == {-3.0}
    assert panels[0]["separation"]["tail_auroc"] == 100.0
    assert [p["run"]["seed"] for p in separation_panels(store, store.runs("done"))] == [0, 0, 0]  # lowest seed
    out = tmp_path / "fig.png"
    assert main(["plot", "separation", "--store", str(trust_store), "--out", str(out), "--method", "mwnet,o2u"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and capsys.readouterr().out.strip() == str(out)
    from bench.plots import _auroc_text
    assert _auroc_text(float("nan")) == "—" and _auroc_text(88.64) == "88.6"  # a cell without noise: no AUROC


def test_the_separation_figure_asks_for_one_cell_and_for_runs_with_trust(tmp_path, capsys):
    path = tmp_path / "s.sqlite"
    fake_store.build(path).close()
    assert main(["plot", "separation", "--store", str(path)]) == 2
    assert "on 5 cells; pick one with --cell: cifar10:1:flip2:0.2, cifar10:1:flip2:0.4, cifar10:50:none, " \
           "cifar10:100:none, cifar10:200:none" in capsys.readouterr().err
    assert main(["plot", "separation", "--store", str(path), "--cell", "cifar10:1:flip2:0.4"]) == 2
    # the fixture's runs hold no per-sample rows at all, as a `bench merge --runs-only` copy's
    assert "the 3 finished run(s) on cifar10:1:flip2:0.4 have no per-sample rows" in capsys.readouterr().err
    assert main(["plot", "separation", "--store", str(path), "--method", "ce,o2u"]) == 2
    assert "no finished runs of ce, o2u in" in capsys.readouterr().err
    assert main(["plot", "separation", "--store", str(path), "--cell", "cifar10:10:none"]) == 2  # no run there
    assert f"no finished runs on --cell cifar10:10:none in {path}" in capsys.readouterr().err
    trust = Store(path)
    fake_store.add_fake_trust_run(trust, "ce", "CE", {})  # rows, and no trust record
    trust.close()
    assert main(["plot", "separation", "--store", str(path), "--cell", "fmnist-mini:8:flip2:0.25"]) == 2
    assert "no finished run on fmnist-mini:8:flip2:0.25 records a per-sample weight" in capsys.readouterr().err
    # the cell's CurveNet of the quick preset beside one of the paper preset: one label, so two figures
    store = Store(path)
    paper = fake_store.paper_spec("curvenet", "cifar10", 200, "none", 0, 0, fake_store.CURVENET_PARAMS)
    fake_store.add_run(store, paper, "CurveNet", 12.0)
    store.close()
    assert main(["plot", "separation", "--store", str(path), "--cell", "cifar10:200:none"]) == 2
    assert "of 2 protocols (preset paper, model resnet32; preset quick, model small_cnn); pick one with " \
           "--preset" in capsys.readouterr().err


def test_the_tail_is_the_classes_with_fewest_samples_whatever_their_index():
    assert tail_classes(np.repeat([0, 1, 2, 3], [5, 40, 20, 10])).tolist() == [0, 3]
    assert tail_classes(np.repeat([0, 1, 2, 3, 4], [3, 50, 2, 40, 30])).tolist() == [0, 2]


def test_a_stored_runs_tail_and_clean_samples_come_from_the_true_labels_not_the_observed_ones():
    """The tail is chosen by *true* class (mislabelled samples counted in their true class), as
    the module docstring and `bench table --metric tail_auroc` say: here the observed labels would
    make classes 0 and 1 the smallest, the true labels make 2 and 3 the tail."""
    clean = np.repeat([0, 1, 2, 3], [12, 10, 4, 2])
    observed = clean.copy()
    observed[:8], observed[12:18] = 3, 2  # 8 of class 0 seen as 3, 6 of class 1 seen as 2
    noisy = observed != clean
    trust = np.where(noisy, 0.1, 0.9)
    trust[22:28] = 0.5  # the clean tail: trusted less than the clean head, more than the noise
    record = pd.DataFrame({"clean_label": clean, "observed_label": observed, "is_noisy": noisy, "value": trust})

    class OneRecord:
        def sample_record(self, key, name):
            return record if name == "weight" else None

    s = run_separation(OneRecord(), "k")
    assert s["record"] == "weight" and s["tail"] == [2, 3]
    assert (s["noisy"], s["clean"], s["clean_tail"]) == (14, 14, 6)
    assert s["tail_auroc"] == 100.0 and s["mean_clean_tail"] == 0.5
    assert s == {"record": "weight", **separation(clean, noisy, trust)}


def test_samples_without_a_trust_value_are_left_out_of_the_counts_too():
    clean = np.array([0, 0, 0, 0, 1, 1])
    noisy = np.array([False, False, True, False, False, True])
    s = separation(clean, noisy, np.array([0.9, 0.8, 0.1, np.nan, np.nan, 0.5]))
    assert (s["noisy"], s["clean"], s["clean_tail"]) == (2, 2, 0)
    assert math.isnan(s["mean_clean_tail"]) and s["mean_clean"] == pytest.approx(0.85)


def test_show_says_how_many_clean_tail_samples_a_selection_method_removed(tmp_path, capsys):
    """CurveNet's premise (Sec. 1): a loss-based selection removes clean tail samples with the
    mislabelled ones. A fake AUM removes every mislabelled sample and the clean samples of class 3
    (one of the tail classes 2, 3); bench show counts them against the pool's clean tail samples."""
    clean, noisy, _ = fake_store.fake_samples(0)
    kept = ~noisy & (clean != 3)
    store = Store(tmp_path / "s.sqlite")
    key = fake_store.add_fake_trust_run(store, "aum", "AUM", {"score": np.where(kept, 0.0, 1.0), "kept": kept})
    store.close()
    assert main(["show", key, "--store", str(tmp_path / "s.sqlite"), "--format", "json"]) == 0
    sep = json.loads(capsys.readouterr().out)["separation"]
    clean_tail = ~noisy & np.isin(clean, [2, 3])
    assert sep["tail"] == [2, 3] and sep["clean_tail_pool"] == clean_tail.sum()
    assert sep["removed_clean_tail"] == (~noisy & (clean == 3)).sum() > 0
    assert sep["removed"] == (~kept).sum() and sep["recall"] == 1.0 and sep["precision"] < 1.0
    assert main(["show", key, "--store", str(tmp_path / "s.sqlite")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    share = 100 * sep["removed_clean_tail"] / clean_tail.sum()
    assert f"and {sep['removed_clean_tail']} of the {clean_tail.sum()} clean tail samples ({share:.1f}%)" in out


# --- the separation figure (mutation-tested) ---

def test_samples_without_trust_are_left_out_of_the_separation_figures_groups(tmp_path):
    from bench.plots import separation_panels

    clean, noisy, _ = fake_store.fake_samples(0)
    weight = np.where(noisy, 0.2, 0.9)
    weight[:10] = np.nan  # class 0 (head): ten samples without a weight
    store = Store(tmp_path / "s.sqlite")
    fake_store.add_fake_trust_run(store, "mwnet", "MW-Net(noise)", {"weight": weight})
    (panel,) = separation_panels(store, store.runs("done"))
    store.close()
    has = ~np.isnan(weight)
    tail = np.isin(clean, [2, 3])
    assert {g: len(v) for g, v in panel["groups"].items()} == {
        "clean, head": (has & ~noisy & ~tail).sum(), "clean, tail": (has & ~noisy & tail).sum(),
        "mislabelled": (has & noisy).sum()}


def test_the_separation_figure_shows_the_groups_that_have_samples_and_what_the_trust_is(tmp_path, figures,
                                                                                         suptitle):
    from bench.plots import plot_separation

    sep = {"noise_auroc": 88.64, "tail_auroc": float("nan")}
    panels = [{"label": "O2U-Net", "record": "score", "separation": sep,
               "groups": {"clean, head": np.array([-1.0, -1.5, -2.0]), "clean, tail": np.array([]),
                          "mislabelled": np.array([-3.0, -3.5])}},
              {"label": "MW-Net(noise)", "record": "weight", "separation": sep,
               "groups": {"clean, head": np.array([0.9]), "clean, tail": np.array([0.5, 0.6]),
                          "mislabelled": np.array([0.1])}}]
    plot_separation(panels, tmp_path / "f.png", "the title")
    score, weight = figures[0].axes
    assert [t.get_text() for t in score.get_xticklabels()] == ["clean, head\n3", "mislabelled\n2"]
    assert score.get_ylabel() == "− selection score" and weight.get_ylabel() == "final weight"
    assert score.get_title() == "O2U-Net\nnoise 88.6 · tail —"
    assert len(weight.get_xticklabels()) == 3 and suptitle(figures[0]) == "the title"
    # a balanced cell has no tail classes: its clean samples are "clean", not "clean, head"
    balanced = {"noise_auroc": 70.0, "tail_auroc": float("nan"), "tail": np.array([], int)}
    plot_separation([{**panels[0], "separation": balanced}], tmp_path / "g.png", "balanced")
    assert [t.get_text() for t in figures[1].axes[0].get_xticklabels()] == ["clean\n3", "mislabelled\n2"]


def test_bench_plot_separation_shows_the_asked_methods_and_seed(trust_store, tmp_path, monkeypatch, capsys, figures,
                                                                suptitle):
    monkeypatch.chdir(tmp_path)
    runs = Store(trust_store, create=False).runs("done")
    assert main(["plot", "separation", "--store", str(trust_store), "--method", "mwnet,o2u", "--seed", "1"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "figures/separation_fmnist-mini_8_flip2_0.25_seed1.png"
    seed1 = runs[runs["seed"] == 1].set_index("method")["key"]
    assert err.strip() == f"2 runs: MW-Net(noise) {seed1['mwnet'][:12]}, O2U-Net {seed1['o2u'][:12]}"
    assert suptitle(figures[0]).endswith("(quick preset, seed 1)")
    assert main(["plot", "separation", "--store", str(trust_store), "--classes", "0,1"]) == 2
    assert "separation shows every method of a cell: drop --run/--classes" in capsys.readouterr().err


def test_the_separation_figure_names_each_panels_seed_and_the_lowest_in_its_file_name(tmp_path, monkeypatch, capsys,
                                                                                      figures, suptitle):
    clean, noisy, _ = fake_store.fake_samples(0)
    store = Store(tmp_path / "s.sqlite")
    fake_store.add_fake_trust_run(store, "curvenet", "CurveNet", {"weight": np.where(noisy, 0.2, 0.9)}, seed=0)
    clean, noisy, _ = fake_store.fake_samples(1)
    fake_store.add_fake_trust_run(store, "mwnet", "MW-Net(noise)", {"weight": np.where(noisy, 0.2, 0.9)}, seed=1)
    store.close()
    monkeypatch.chdir(tmp_path)
    assert main(["plot", "separation", "--store", str(tmp_path / "s.sqlite")]) == 0
    assert capsys.readouterr().out.strip() == "figures/separation_fmnist-mini_8_flip2_0.25_seed0.png"
    assert suptitle(figures[0]).endswith("(quick preset, seed 0, 1)")


def test_the_separation_figure_takes_the_preset_that_tells_two_protocols_apart(tmp_path, capsys):
    path = tmp_path / "s.sqlite"
    store = fake_store.build(path)
    paper = fake_store.paper_spec("curvenet", "cifar10", 200, "none", 0, 0, fake_store.CURVENET_PARAMS)
    fake_store.add_run(store, paper, "CurveNet", 12.0)
    store.close()
    assert main(["plot", "separation", "--store", str(path), "--cell", "cifar10:200:none", "--preset", "quick"]) == 2
    err = capsys.readouterr().err
    assert "the 1 finished run(s) on cifar10:200:none have no per-sample rows" in err and "protocols" not in err
    assert main(["plot", "separation", "--store", str(path), "--method", "curvenet", "--preset", "paper"]) == 2
    assert "the runs are on 2 cells; pick one with --cell: cifar10:1:flip2:0.4, cifar10:200:none" in \
        capsys.readouterr().err


def test_a_runs_only_copy_reads_alike_and_says_why_it_has_no_separation(trust_store, tmp_path, capsys):
    """``bench merge --runs-only``: accuracy tables, compare and show print the same from the small
    copy as from the store the runs were trained into; separation tables, ``show`` and the figures
    say the copy holds no per-sample rows instead of blaming the method."""
    slim = tmp_path / "slim.sqlite"
    assert main(["merge", str(trust_store), "--store", str(slim), "--runs-only"]) == 0
    assert "8 runs copied (8 done, 0 failed, without per-sample rows)" in capsys.readouterr().err
    assert slim.stat().st_size < trust_store.stat().st_size
    for command in (["table", "--average"], ["table", "--metric", "minutes"], ["compare", "curvenet", "mwnet"],
                    ["show"]):
        outputs = []
        for path in (trust_store, slim):
            assert main([*command, "--store", str(path)]) == 0
            outputs.append(capsys.readouterr().out)
        assert outputs[0] == outputs[1] and outputs[0], command
    assert main(["table", "--metric", "noise_auroc", "--store", str(slim)]) == 2
    err = capsys.readouterr().err
    assert "none of the 8 run(s) with noise has per-sample rows" in err and "bench merge --runs-only" in err
    assert main(["compare", "curvenet", "mwnet", "--metric", "tail_auroc", "--store", str(slim)]) == 2
    assert "has per-sample rows" in capsys.readouterr().err
    key = Store(slim, create=False).runs()["key"].iloc[0]
    assert main(["show", key, "--store", str(slim)]) == 0
    assert "recorded  no per-sample rows in this store (copied by `bench merge --runs-only`" in capsys.readouterr().out
    assert main(["plot", "weights", "--method", "curvenet", "--seed", "0", "--store", str(slim),
                 "--out", str(tmp_path / "w.png")]) == 2
    assert "has no per-sample rows" in capsys.readouterr().err and not (tmp_path / "w.png").exists()
    assert main(["plot", "separation", "--store", str(slim), "--out", str(tmp_path / "s.png")]) == 2
    assert "have no per-sample rows" in capsys.readouterr().err and not (tmp_path / "s.png").exists()
    one = Store(tmp_path / "one.sqlite")  # one run in full: the copy's others are left out, and said so
    one.merge_from(Store(trust_store, create=False))
    runs = one.runs()
    one.remove(runs.loc[(runs["method"] != "curvenet") | (runs["seed"] != 0), "key"].tolist())
    assert Store(slim).merge_from(one)["done"] == 1
    assert main(["table", "--metric", "noise_auroc", "--store", str(slim)]) == 0
    captured = capsys.readouterr()
    assert "note: 7 of the 8 runs with noise have no per-sample rows" in captured.err and "CurveNet" in captured.out
