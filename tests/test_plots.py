"""Fig. 1 and Fig. 5 from the store (bench/plots.py), on a fake CurveNet-like run."""

import subprocess
import sys
from pathlib import Path

import numpy as np
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
    assert sum(len(x["clean"]) + len(x["noisy"]) for x in w) == 75
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


def test_out_without_a_suffix_is_a_png_and_the_printed_path_is_the_file_written(store, tmp_path, capsys):
    from bench.cli import main

    key = plots.select_run(store)["key"]
    assert main(["plot", "weights", "--run", key[:8], "--store", str(store.path), "--out", str(tmp_path / "fig")]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed == tmp_path / "fig.png" and printed.read_bytes()[:8] == PNG
    assert plots.check_out(None) is None and plots.check_out("a/b.pdf") == "a/b.pdf"
    with pytest.raises(BenchError, match="matplotlib cannot write .v2 files"):
        plots.check_out("fig.v2")


def test_classes_for_the_weights_figure_is_refused_not_ignored(store, tmp_path, capsys):
    from bench.cli import main

    key = plots.select_run(store)["key"]
    assert main(["plot", "weights", "--run", key[:8], "--classes", "1,2", "--store", str(store.path),
                 "--out", str(tmp_path / "w.png")]) == 2
    assert "--classes picks the curves figure's two classes" in capsys.readouterr().err
    assert not (tmp_path / "w.png").exists()
