"""Fig. 1 and Fig. 5 from the store (bench/plots.py), on a fake CurveNet-like run."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import plots
from bench.errors import BenchError
from bench.spec import Cell
from bench.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
import fake_store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def store(tmp_path):
    s = Store(tmp_path / "p.sqlite")
    fake_store.add_fake_curvenet_run(s)
    yield s
    s.close()


def test_groups_by_observed_label_and_noise(store):
    run = plots.select_run(store, cell=Cell("fmnist-mini", 8, "flip2", 0.25))
    samples = store.samples(run["key"])
    curves, kind = plots.load_curves(store, run["key"], len(samples))
    assert kind.startswith("raw probe loss") and curves.shape == (75, 12)
    g = plots.curve_groups(samples, curves, 3)
    obs, noisy = samples["observed_label"].to_numpy(), samples["is_noisy"].to_numpy()
    mask = (obs == 3) & noisy
    assert g["noisy"]["n"] == mask.sum() and np.allclose(g["noisy"]["mean"], curves[mask].mean(0))
    assert g["clean"]["mean"][-1] < 0.3 < g["noisy"]["mean"][-1]  # the fake curves: clean ones decay
    w = plots.weight_groups(samples)
    assert len(w) == 4 and all(np.all(x["clean"] > 0.7) and np.all(x["noisy"] < 0.4) for x in w)
    assert sum(len(x["clean"]) + len(x["noisy"]) for x in w) == 75 and not any(x["missing"] for x in w)
    # samples without a weight are left out of their boxes and counted, not a box lost to one NaN
    gaps = samples.assign(weight=samples["weight"].where(~samples.index.isin([0, 1, 40]), np.nan))
    w = plots.weight_groups(gaps)
    assert sum(x["missing"] for x in w) == 3 and sum(len(x["clean"]) + len(x["noisy"]) for x in w) == 72
    assert not any(np.isnan(x[k]).any() for x in w for k in ("clean", "noisy"))
    counts = plots._train_counts(run, samples)
    assert list(counts) == [40, 20, 10, 5] and plots.head_and_tail(samples, counts) == (0, 3)


def test_figures_are_written(store, tmp_path):
    run = plots.select_run(store)
    for fig, fn in (("curves", plots.plot_curves), ("weights", plots.plot_weights)):
        out = fn(store, run, tmp_path / f"{fig}.png")
        data = out.read_bytes()
        assert data[:8] == PNG and len(data) > 10_000


def test_normalised_curve_is_the_fallback(tmp_path):
    s = Store(tmp_path / "n.sqlite")
    key = fake_store.add_fake_curvenet_run(s, raw=False)
    curves, kind = plots.load_curves(s, key, 75)
    assert kind.startswith("normalised curve") and curves.shape == (75, 12)


def test_run_selection_errors(store, tmp_path):
    with pytest.raises(BenchError, match="no finished ce run"):
        plots.select_run(store, method="ce")
    fake_store.add_fake_curvenet_run(store, seed=1)  # same config, another seed: the lowest seed wins
    assert plots.select_run(store)["seed"] == 0
    assert plots.select_run(store, seed=1)["seed"] == 1
    spec_other = fake_store.paper_spec("curvenet", "cifar10", 20, "flip2", 0.4, 0, fake_store.CURVENET_PARAMS)
    fake_store.add_run(store, spec_other, "CurveNet", 50.0)
    with pytest.raises(BenchError, match="different configurations"):
        plots.select_run(store)
    with pytest.raises(BenchError, match="no per-sample"):  # a run without curves
        run = plots.select_run(store, cell=Cell("cifar10", 20, "flip2", 0.4))
        plots.load_curves(store, run["key"], 0)
    with pytest.raises(BenchError, match="unknown method 'curvenett'"):  # a typo in --method
        plots.select_run(store, method="curvenett")
    with pytest.raises(BenchError, match="finished runs are of curvenet"):  # a method not run
        plots.select_run(store, method="mwnet")
    assert plots.select_run(store, method="CurveNet", seed=1)["seed"] == 1  # the name tables show
    with pytest.raises(BenchError, match="with preset papr in .*its curvenet runs: .*fmnist-mini imb8 flip2:0.25, "
                                         "preset quick, seed 0"):  # the filter that excluded them is named
        plots.select_run(store, cell=Cell("fmnist-mini", 8, "flip2", 0.25), preset="papr")
    with pytest.raises(BenchError):
        plots.parse_cell("cifar10:20")
    assert plots.parse_cell("cifar10:50:none") == Cell("cifar10", 50, "none", 0)
    assert plots.parse_cell("fmnist-mini:10:flip2:0.4") == Cell("fmnist-mini", 10, "flip2", 0.4)


def test_cli_plot(store, tmp_path):
    key = plots.select_run(store)["key"]
    out = tmp_path / "w.png"
    r = subprocess.run([sys.executable, "-m", "bench", "plot", "weights", "--run", key[:8], "--store",
                        str(store.path), "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out) and out.read_bytes()[:8] == PNG
    r = subprocess.run([sys.executable, "-m", "bench", "plot", "curves", "--cell", "nope", "--store",
                        str(store.path)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "malformed --cell" in r.stderr


def test_run_with_options_that_pick_another_run_is_an_error(store, tmp_path, capsys):
    from bench.cli import main

    key = plots.select_run(store)["key"]
    out = tmp_path / "w.png"
    for extra, named in ((["--method", "mwnet"], "--method"), (["--cell", "fmnist-mini:8:flip2:0.25"], "--cell"),
                         (["--seed", "0", "--preset", "quick"], "--preset, --seed")):
        code = main(["plot", "weights", "--run", key[:8], *extra, "--store", str(store.path), "--out", str(out)])
        assert code == 2 and f"--run picks one run by its key; drop {named}" in capsys.readouterr().err
    assert not out.exists()
    for figure in ("weights", "separation"):  # a format matplotlib cannot write: said before any work
        assert main(["plot", figure, "--store", str(store.path), "--out", str(tmp_path / "w.txt")]) == 2
        assert "--out" in (err := capsys.readouterr().err) and "cannot write .txt files; use one of" in err
        assert ".png" in err and ".pdf" in err and not (tmp_path / "w.txt").exists()


def test_classes_out_of_range_are_an_error(store, tmp_path):
    run = plots.select_run(store, cell=Cell("fmnist-mini", 8, "flip2", 0.25))
    with pytest.raises(BenchError, match="class indices lie in 0..3"):
        plots.plot_curves(store, run, tmp_path / "c.png", (0, 42))
    assert not (tmp_path / "c.png").exists()


# --- what the figures show: the drawn figure is kept (the figures fixture), not closed ---

class OtherSamples:
    """A store whose samples of every run are ``samples`` (the real store's arrays otherwise)."""

    def __init__(self, store, samples):
        self.store, self._samples = store, samples

    def samples(self, key):
        return self._samples

    def array(self, key, name):
        return self.store.array(key, name)


class Arrays:
    """A store holding just the given per-sample arrays."""

    def __init__(self, **arrays):
        self.arrays = arrays

    def array(self, key, name):
        if name not in self.arrays:
            raise KeyError(name)
        return self.arrays[name]


def test_the_curves_figure_shows_the_head_and_tail_groups_of_the_stored_curves(store, tmp_path, figures, suptitle):
    run = plots.select_run(store)
    samples = store.samples(run["key"])
    curves = store.array(run["key"], "probe_loss")
    plots.plot_curves(store, run, tmp_path / "c.png")
    (fig,) = figures
    head, tail = fig.axes[:2]
    assert head.get_title() == "head class 0 (40 training samples with that clean label)"
    assert tail.get_title() == "tail class 3 (5 training samples with that clean label)"
    assert head.get_ylabel() == "raw probe loss" and "raw probe loss (array 'probe_loss')" in suptitle(fig)
    obs, noisy = samples["observed_label"].to_numpy(), samples["is_noisy"].to_numpy()
    for ax, cls in ((head, 0), (tail, 3)):
        (clean_line, noisy_line) = ax.get_lines()
        for line, mask in ((clean_line, (obs == cls) & ~noisy), (noisy_line, (obs == cls) & noisy)):
            assert list(line.get_xdata()) == list(range(12))  # raw probe losses: from probe epoch 0
            assert np.allclose(line.get_ydata(), curves[mask].mean(0))
        band = ax.collections[0].get_paths()[0].vertices[:, 1]  # the clean band: mean ± std (ddof 0)
        sel = curves[(obs == cls) & ~noisy]
        assert np.isclose(band.max(), (sel.mean(0) + sel.std(0)).max())
        assert np.isclose(band.min(), (sel.mean(0) - sel.std(0)).min())
        assert clean_line.get_label() == f"clean (n={((obs == cls) & ~noisy).sum()})"


def test_normalised_curves_are_drawn_from_probe_epoch_drop_first(tmp_path, figures):
    s = Store(tmp_path / "n.sqlite")
    fake_store.add_fake_curvenet_run(s, raw=False)
    plots.plot_curves(s, plots.select_run(s), tmp_path / "c.png")
    s.close()
    ax = figures[0].axes[0]
    assert list(ax.get_lines()[0].get_xdata()) == list(range(5, 17))  # drop_first=5 of CURVENET_PARAMS
    assert ax.get_ylabel() == "normalised curve"


def test_a_class_without_noisy_samples_is_drawn_with_a_note(store, tmp_path, figures):
    run = plots.select_run(store)
    samples = store.samples(run["key"]).copy()
    samples.loc[samples["observed_label"] == 3, "is_noisy"] = False
    plots.plot_curves(OtherSamples(store, samples), run, tmp_path / "c.png", (0, 3))
    tail = figures[0].axes[1]
    assert len(tail.get_lines()) == 1 and tail.get_lines()[0].get_label().startswith("clean")
    assert [t.get_text() for t in tail.texts] == ["no noisy samples with this label"]


def test_head_and_tail_are_among_the_classes_holding_clean_and_noisy_samples():
    samples = pd.DataFrame({"observed_label": [0, 0, 1, 1, 2, 2, 3, 3], "is_noisy": [True, True] + [True, False] * 3})
    counts = np.array([40, 20, 10, 5])
    assert plots.head_and_tail(samples, counts) == (1, 3)  # class 0 holds no clean sample with its label
    clean_only = samples.assign(is_noisy=False)  # no noise at all: every class
    assert plots.head_and_tail(clean_only, counts) == (0, 3)
    assert plots.head_and_tail(clean_only, np.array([7, 7, 7, 7])) == (0, 3)  # a balanced cell: two classes


def test_train_counts_are_the_stored_ones_else_the_clean_labels(store):
    run = plots.select_run(store)
    samples = store.samples(run["key"])
    assert list(plots._train_counts(pd.Series({"train_counts": [7, 6, 5, 4]}), samples)) == [7, 6, 5, 4]
    assert list(plots._train_counts(pd.Series({"train_counts": None}), samples)) == [40, 20, 10, 5]


def test_raw_probe_losses_are_preferred_and_a_transposed_array_is_read(tmp_path):
    raw, normalised = np.ones((4, 3)), np.zeros((4, 3))
    curves, kind = plots.load_curves(Arrays(curve=normalised, probe_loss=raw), "k", 4)
    assert kind == "raw probe loss (array 'probe_loss')" and (curves == 1).all()
    curves, kind = plots.load_curves(Arrays(curve=np.arange(12.0).reshape(3, 4)), "k", 4)  # (T, N) stored
    assert curves.shape == (4, 3) and list(curves[1]) == [1.0, 5.0, 9.0]
    with pytest.raises(BenchError, match="no per-sample loss curves"):
        plots.load_curves(Arrays(curve=np.ones(4), probe_loss=np.ones((5, 3))), "k", 4)


def test_the_classes_can_be_picked_and_are_checked(store, tmp_path, figures, capsys):
    from bench.cli import main

    run = plots.select_run(store)
    plots.plot_curves(store, run, tmp_path / "a.png", (0, 3))  # the first and the last class
    with pytest.raises(BenchError, match="class indices lie in 0..3"):
        plots.plot_curves(store, run, tmp_path / "b.png", (0, 4))
    assert main(["plot", "curves", "--run", run["key"][:8], "--classes", "2,1", "--store", str(store.path), "--out",
                 str(tmp_path / "c.png")]) == 0
    assert [ax.get_title().split(" (")[0] for ax in figures[-1].axes[:2]] == ["head class 2", "tail class 1"]
    assert main(["plot", "curves", "--run", run["key"][:8], "--classes", "2", "--store", str(store.path)]) == 2
    assert "--classes must be HEAD,TAIL (two class indices), got '2'" in capsys.readouterr().err


def test_a_cell_picks_curvenet_by_default_and_the_figure_is_named_by_the_runs_key(store, tmp_path, monkeypatch,
                                                                                  capsys):
    from bench.cli import main

    monkeypatch.chdir(tmp_path)
    key = plots.select_run(store)["key"]
    assert main(["plot", "curves", "--cell", "fmnist-mini:8:flip2:0.25", "--store", str(store.path)]) == 0
    assert capsys.readouterr().out.strip() == f"figures/curves_{key[:12]}.png"
    assert (tmp_path / "figures" / f"curves_{key[:12]}.png").read_bytes()[:8] == PNG
    assert main(["plot", "weights", "--run", key[:8], "--store", str(store.path), "--out", "w.PNG"]) == 0  # any case
    assert (tmp_path / "w.PNG").read_bytes()[:8] == PNG


def test_selecting_a_run_that_is_not_done_or_by_two_methods_is_an_error(store):
    spec = fake_store.paper_spec("curvenet", "cifar10", 20, "flip2", 0.4, 0, fake_store.CURVENET_PARAMS)
    store.start(spec.key(), spec.to_dict(), "CurveNet")
    with pytest.raises(BenchError, match=f"run {spec.key()} is running, not done"):
        plots.select_run(store, run=spec.key()[:8])
    with pytest.raises(BenchError, match="--method names one method here"):
        plots.select_run(store, method="curvenet,mwnet")


def test_weights_need_a_stored_weight_and_every_class_is_shown(store, tmp_path, figures):
    run = plots.select_run(store)
    samples = store.samples(run["key"])
    with pytest.raises(BenchError, match="stored no per-sample 'weight'"):
        plots.weight_groups(samples.assign(weight=np.nan))
    samples = samples.copy()
    samples.loc[samples["observed_label"] == 2, "is_noisy"] = False  # class 2: clean samples only
    plots.plot_weights(OtherSamples(store, samples), run, tmp_path / "w.png")
    ax = figures[0].axes[0]
    obs, noisy = samples["observed_label"].to_numpy(), samples["is_noisy"].to_numpy()
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        f"{c}\n{((obs == c) & ~noisy).sum()} / {((obs == c) & noisy).sum()}" for c in range(4)]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"clean (n={(~noisy).sum()})",
                                                                   f"noisy (n={noisy.sum()})"]


def test_seeds_of_one_configuration_differ_in_their_data_seed_too(store):
    import json

    from bench.spec import RunSpec

    spec = RunSpec.from_dict(json.loads(plots.select_run(store)["spec_json"]))
    fake_store.add_run(store, spec.replace(seed=1, data_seed=1), "CurveNet", 15.0)  # as `bench run --seeds 0,1`
    assert plots.select_run(store)["seed"] == 0 and plots.select_run(store, seed=1)["seed"] == 1


def test_out_without_a_suffix_is_a_png_and_the_printed_path_is_the_file_written(store, tmp_path, capsys):
    from bench.cli import main

    key = plots.select_run(store)["key"]
    assert main(["plot", "weights", "--run", key[:8], "--store", str(store.path), "--out", str(tmp_path / "fig")]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed == tmp_path / "fig.png" and printed.read_bytes()[:8] == PNG
    assert plots.check_out(None) is None and plots.check_out("a/b.pdf") == "a/b.pdf"
    with pytest.raises(BenchError, match="matplotlib cannot write .v2 files"):
        plots.check_out("fig.v2")
    for out, message in ((str(tmp_path) + "/", "--out .*/: is a folder"), (str(tmp_path), "is a folder"),
                         ("  ", "--out needs a file name"),
                         (str(tmp_path / "fig.png" / "x.png"), "fig.png is a file, not a directory")):
        with pytest.raises(BenchError, match=message):
            plots.check_out(out)
    deeper = tmp_path / "new" / "deeper"
    assert plots.check_out(str(deeper / "f"), "--plot") == str(deeper / "f.png")
    assert not (tmp_path / "new").exists()  # checked, not created, until the figure is written


def test_bad_figure_choices_are_refused(store, tmp_path, capsys):
    from bench.cli import main

    for args, message in ((["curves", "--classes", "1,1"], "--classes needs two different classes"),
                          (["curves", "--seed", "-1"], "--seed must be 0 or more"),
                          (["curves", "--preset", "bogus"], "invalid choice: 'bogus'")):
        assert main(["plot", *args, "--store", str(store.path), "--out", str(tmp_path / "f.png")]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(BenchError, match="unknown dataset 'nosuch'; the datasets are fmnist-mini"):
        plots.parse_cell("nosuch:10:flip2:0.4")
    assert plots.parse_cell("FMNIST-MINI:10:none").dataset == "fmnist-mini"  # a built-in name, case aside


def test_classes_for_the_weights_figure_is_refused_not_ignored(store, tmp_path, capsys):
    from bench.cli import main

    key = plots.select_run(store)["key"]
    assert main(["plot", "weights", "--run", key[:8], "--classes", "1,2", "--store", str(store.path),
                 "--out", str(tmp_path / "w.png")]) == 2
    assert "--classes picks the curves figure's two classes" in capsys.readouterr().err
    assert not (tmp_path / "w.png").exists()
