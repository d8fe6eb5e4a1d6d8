"""Real label noise (``--noise real``): a dataset that carries its own noisy labels beside the
true ones (an npz file's ``y_train_noisy``, as CIFAR-10N gives human labels for CIFAR-10) trains
on them as they are; nothing is drawn (bench/data/bias.py)."""

import json

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.data import BiasSpec, load_dataset, make_biased
from bench.data.bias import noise_text, realised_transition
from bench.data.cli import parse_noise
from bench.errors import BenchError, DataError
from bench.plots import matches_cell, parse_cell
from bench.spec import Cell
from bench.store import Store


def human_noise_npz(path, n_per_class=40, k=4, seed=0):
    """A small npz whose noisy labels confuse class c with c + 1 for a third of the samples."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per_class)
    noisy = np.where(rng.random(len(y)) < 1 / 3, (y + 1) % k, y)
    np.savez(path, x_train=rng.integers(0, 256, (len(y), 8, 8), dtype=np.uint8), y_train=y,
             x_test=rng.integers(0, 256, (4 * k, 8, 8), dtype=np.uint8), y_test=np.arange(4 * k) % k,
             y_train_noisy=noisy)
    return y, noisy


def test_the_pool_keeps_the_datasets_own_noisy_labels_and_the_meta_set_its_true_ones(tmp_path):
    y, noisy = human_noise_npz(tmp_path / "d.npz")
    ds = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert np.array_equal(ds.y_train_noisy, noisy)
    data = make_biased(ds, BiasSpec(imbalance=4, noise_type="real", meta_per_class=5, seed=3))
    assert np.array_equal(data.train_y, noisy[data.train_index])  # the file's labels, none drawn
    assert np.array_equal(data.train_clean_y, y[data.train_index])
    assert np.array_equal(data.is_noisy, noisy[data.train_index] != y[data.train_index])
    assert 0 < data.is_noisy.mean() < 1
    assert np.array_equal(data.y_meta, y[data.meta_index])  # a trusted set: true labels
    assert not np.isin(data.meta_index, data.train_index).any()
    # the imbalance profile is by true class, as for synthetic noise: the same pool as without noise
    clean = make_biased(ds, BiasSpec(imbalance=4, noise_type="none", meta_per_class=5, seed=3))
    assert np.array_equal(data.train_index, clean.train_index)
    assert data.train_counts.tolist() == [35, 22, 13, 8]
    # C is the realised transition: row i = where the samples of true class i went
    summary = data.summary()
    counts = np.array(summary["transition"])
    assert np.allclose(data.transition, counts / counts.sum(1, keepdims=True))
    assert summary["noise_rate_expected"] == pytest.approx(summary["noise_rate_realised"])


def test_realised_transition_gives_a_class_without_samples_the_identity_row():
    C = realised_transition(np.array([0, 0, 0, 1]), np.array([0, 0, 1, 0]), 3)
    assert np.allclose(C, [[2 / 3, 1 / 3, 0], [1, 0, 0], [0, 0, 1]])


def test_real_noise_needs_your_own_file_and_takes_no_rate(tmp_path):
    assert parse_noise("real") == ("real", 0.0)
    with pytest.raises(DataError, match="has no rate; give --noise real"):
        parse_noise("real:0.3")
    with pytest.raises(DataError, match="noise type 'real' .* has no rate"):
        BiasSpec(noise_type="real", noise_rate=0.2).validate()
    with pytest.raises(DataError, match="fmnist-mini's labels are clean; noise 'real' is your own npz file's"):
        make_biased(load_dataset("fmnist-mini"), BiasSpec(noise_type="real"))
    with pytest.raises(BenchError, match="fmnist-mini's are clean"):  # refused before anything trains
        from bench.arguments import build_specs
        from bench.cli import make_parser
        build_specs(make_parser().parse_args(["run", "--methods", "ce", "--noise", "real"]))


def test_a_real_noise_cell_is_its_own_cell_written_real():
    real = Cell("npz:a.npz", 10.0, "real", 0.0)
    assert real.noise_type == "real"  # rate 0, but not collapsed into the noise-free cell
    assert real.label() == "npz:a.npz imb10 real"
    assert noise_text("real", 0.0) == "real" and noise_text("flip2", 0.4, sep=" ") == "flip2 0.4"
    assert noise_text("none", 0.0, clean="none") == "none"
    # --cell reads from the right, so npz paths with their colons parse
    assert parse_cell("npz:a.npz:10:real") == real
    assert parse_cell("npz:data/b.npz:1:none") == Cell("npz:data/b.npz", 1.0, "none", 0.0)
    assert parse_cell("npz:b.npz:20:flip2:0.4") == Cell("npz:b.npz", 20.0, "flip2", 0.4)
    for malformed in ("10:real", "fmnist-mini:10:10:flip2:0.4", "fmnist-mini:x:10:none"):  # colons: npz only
        with pytest.raises(BenchError, match="malformed --cell"):
            parse_cell(malformed)
    with pytest.raises(DataError, match="choose one of uniform, flip, flip2, uniform_freq for noisy labels"):
        parse_cell("fmnist-mini:10:none:0.3")
    import pandas as pd
    runs = pd.DataFrame({"dataset": ["npz:a.npz"] * 3, "imbalance": [10.0] * 3,
                         "noise_type": ["real", "none", "flip2"], "noise_rate": [0.0, 0.0, 0.4]})
    assert matches_cell(runs, real).tolist() == [True, False, False]
    assert matches_cell(runs, parse_cell("npz:a.npz:10:none")).tolist() == [False, True, False]


def test_nominal_rate_of_real_noise_is_the_rate_of_its_wrong_labels(tmp_path):
    """Co-teaching's tau and O2U-Net's k default to the nominal rate; real noise has none to set,
    so it is the fraction of the pool's labels that are wrong, as such datasets state their rate."""
    import methods
    from methods.curves import resolve_rate

    o2u = methods.get("o2u")

    human_noise_npz(tmp_path / "d.npz")
    data = make_biased(load_dataset(f"npz:{tmp_path / 'd.npz'}"), BiasSpec(noise_type="real", meta_per_class=5))

    class FakeRun:
        def __init__(self, noise_type, noise_rate):
            self.spec = type("Spec", (), {"noise_type": noise_type, "noise_rate": noise_rate})()
            self.data = data

    assert resolve_rate(FakeRun("real", 0.0), "nominal") == pytest.approx(data.is_noisy.mean())
    assert resolve_rate(FakeRun("flip2", 0.4), "nominal") == 0.4  # synthetic noise: its set rate
    # each run's own rate: a fused O2U-Net group cannot share one pre-trained network then
    from bench.arguments import build_specs
    from bench.cli import make_parser
    specs = build_specs(make_parser().parse_args(
        ["run", "--methods", "o2u", "--dataset", f"npz:{tmp_path / 'd.npz'}", "--noise", "real,flip2:0.2",
         "--meta-per-class", "5", "--set", "o2u.retrain=pretrained"]))
    assert [(s.noise_type, o2u.fuses(s)) for s in specs] == [("real", False), ("flip2", True)]


def test_bench_run_table_and_separation_on_real_noise(tmp_path, capsys):
    path = tmp_path / "d.npz"
    human_noise_npz(path)
    store = tmp_path / "s.sqlite"
    common = ["--dataset", f"npz:{path}", "--imbalance", "2", "--meta-per-class", "5", "--epochs", "1",
              "--store", str(store), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(["run", "--methods", "ce,coteaching", "--noise", "real,none", *common]) == 0
    out = capsys.readouterr().out
    assert f"npz:{path} imb2 real" in out and f"npz:{path} imb2 clean" in out
    assert "CE [data_sha256=" in out  # runs on your own file are labelled with its version
    assert main(["table", "--store", str(store), "--metric", "noise_auroc"]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("| Co-teaching"))
    assert "(n=1)" in row and f"npz:{path} imb2 real" in table  # real noise has mislabelled samples
    assert "imb2 clean" not in table  # the noise-free cell has none
    assert main(["show", "--store", str(store), "--cell", f"npz:{path}:2:real", "--format", "json"]) == 0
    import json
    shown = json.loads(capsys.readouterr().out)
    assert sorted(r["method"].split(" [")[0] for r in shown) == ["CE", "Co-teaching"]
    import os
    os.chdir(tmp_path)  # the figure's default folder: ./figures, its name without the npz path's folders
    assert main(["plot", "separation", "--store", str(store), "--cell", f"npz:{path}:2:real"]) == 0
    figure = capsys.readouterr().out.strip()
    assert figure.startswith("figures/separation_npz_") and figure.count("/") == 1 and (tmp_path / figure).is_file()


def test_the_curvenet_probe_cache_key_holds_the_npz_files_version():
    """Two versions of your file may differ in images alone, so cached probe curves of one are not
    taken for the other's; the built-in datasets' keys (digest '') are as before."""
    from bench.spec import RunSpec
    from methods.curvenet import probe_key
    from methods.curves import Schedule

    class FakeRun:
        def __init__(self, **fields):
            self.spec = RunSpec(method="curvenet", dataset="npz:d.npz", imbalance=1.0, noise_type="real",
                                noise_rate=0.0, **fields)
            self.data = type("Data", (), {"train_y": np.zeros(10)})()

    schedule = Schedule((0.1,), (16,))
    keys = {probe_key(FakeRun(data_sha256=d), schedule) for d in ("", "a" * 16, "b" * 16)}
    assert len(keys) == 3


def own_meta_npz(path, n_per_class=40, meta_per_class=6, k=4, seed=0):
    """Web-style data: training labels of unknown truth, and a small trusted set apart from them."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per_class)
    y_meta = np.repeat(np.arange(k), meta_per_class)
    np.savez(path, x_train=rng.integers(0, 256, (len(y), 8, 8), dtype=np.uint8), y_train=y,
             x_test=rng.integers(0, 256, (4 * k, 8, 8), dtype=np.uint8), y_test=np.arange(4 * k) % k,
             x_meta=np.full((len(y_meta), 8, 8), 7, dtype=np.uint8), y_meta=y_meta)


def test_a_files_own_meta_set_is_the_meta_set_and_every_training_image_trains(tmp_path):
    own_meta_npz(tmp_path / "d.npz")
    ds = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert ds.meta_start == 160 and len(ds.x_train) == 160 + 24
    data = make_biased(ds, BiasSpec(imbalance=1, noise_type="real", meta_per_class=4, seed=2))
    assert (data.x_meta == 7).all() and np.bincount(data.y_meta).tolist() == [4, 4, 4, 4]  # from x_meta
    assert (data.meta_index >= 160).all() and (data.train_index < 160).all()
    assert len(data.train_index) == 160  # no training image was taken for the meta set
    assert np.array_equal(data.train_y, ds.y_train[data.train_index]) and not data.is_noisy.any()  # truth unknown
    assert np.array_equal(make_biased(ds, BiasSpec(imbalance=1, meta_per_class=4, seed=2)).train_index,
                          data.train_index)
    # --train-on-meta: the meta set joins the pool, its images from x_meta
    pooled = data.with_meta_in_pool()
    assert len(pooled.x_train) == 176 and (pooled.x_train[np.isin(pooled.train_index, data.meta_index)] == 7).all()
    with pytest.raises(DataError, match=r"class 0 .* has 6 samples in .*own meta set \(x_meta, y_meta\); choose 0..6"):
        make_biased(ds, BiasSpec(meta_per_class=7))
    # a meta set the file supplies is not drawn from the training images
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "e.npz", x_train=rng.integers(0, 256, (8, 8, 8), dtype=np.uint8), y_train=np.arange(8) % 2,
             x_test=rng.integers(0, 256, (2, 8, 8), dtype=np.uint8), y_test=np.arange(2), x_meta=np.zeros((2, 8, 8),
             dtype=np.uint8))
    with pytest.raises(DataError, match="give both x_meta and y_meta"):
        load_dataset(f"npz:{tmp_path / 'e.npz'}")


def test_a_files_own_meta_set_is_drawn_per_class_with_the_data_seed(tmp_path):
    """Step 1 of bench/data/bias.py with a file's own meta set: per class, m of its trusted samples
    after a shuffle with the data seed (as feeder.py L164-177 shuffles each class before taking
    the first m): one seed always picks the same m, other seeds pick other ones."""
    own_meta_npz(tmp_path / "d.npz", meta_per_class=6)
    ds = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    picks = {}
    for seed in range(6):
        data = make_biased(ds, BiasSpec(imbalance=1, meta_per_class=2, seed=seed))
        assert np.bincount(data.y_meta).tolist() == [2, 2, 2, 2] and (data.meta_index >= ds.meta_start).all()
        assert np.array_equal(make_biased(ds, BiasSpec(imbalance=1, meta_per_class=2, seed=seed)).meta_index,
                              data.meta_index)
        picks[seed] = tuple(data.meta_index.tolist())
    assert len(set(picks.values())) > 1
    first_two = tuple(np.sort(np.concatenate([ds.meta_start + 6 * c + np.arange(2) for c in range(4)])).tolist())
    assert set(picks.values()) != {first_two}  # not simply the first m of each class in file order


def test_a_files_own_meta_set_beside_noisy_labels_keeps_its_trusted_labels(tmp_path):
    """A file with noisy labels (y_train_noisy) and a trusted set (x_meta, y_meta): the pool trains
    on the noisy labels, the meta set on its own trusted labels, which are also its entries of
    ``Dataset.y_train_noisy`` (a trusted set has no other label)."""
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 30)
    noisy = np.where(rng.random(len(y)) < 0.4, (y + 1) % 4, y)
    y_meta = np.repeat(np.arange(4), 3)
    np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 256, (len(y), 8, 8), dtype=np.uint8), y_train=y,
             y_train_noisy=noisy, x_test=rng.integers(0, 256, (8, 8, 8), dtype=np.uint8), y_test=np.arange(8) % 4,
             x_meta=np.full((len(y_meta), 8, 8), 7, dtype=np.uint8), y_meta=y_meta)
    ds = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert ds.meta_start == len(y) and np.array_equal(ds.y_train_noisy[ds.meta_start:], y_meta)
    data = make_biased(ds, BiasSpec(noise_type="real", meta_per_class=3, seed=1))
    assert (data.meta_index >= ds.meta_start).all() and np.array_equal(data.y_meta, ds.y_train[data.meta_index])
    assert np.array_equal(data.train_y, noisy[data.train_index]) and data.is_noisy.any()
    assert np.array_equal(data.train_clean_y, y[data.train_index])


@pytest.mark.parametrize("bad, match", [
    ({"x_meta": np.zeros((4, 6, 6), np.uint8)}, "x_meta and x_train must share H x W x C"),
    ({"y_meta": np.array([0, 1, 2, 9])}, r"y_meta has labels outside 0..3"),
    ({"x_meta": np.zeros((0, 8, 8), np.uint8), "y_meta": np.zeros(0, np.int64)}, "x_meta is empty"),
    ({"y_meta": np.array([0, 1, 2])}, r"y_meta must be 1-D integer labels, one per image"),
])
def test_a_malformed_own_meta_set_is_a_one_line_error(tmp_path, bad, match):
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 256, (8, 8, 8), dtype=np.uint8), y_train=np.arange(8) % 4,
                  x_test=rng.integers(0, 256, (4, 8, 8), dtype=np.uint8), y_test=np.arange(4),
                  x_meta=np.zeros((4, 8, 8), np.uint8), y_meta=np.arange(4))
    np.savez(tmp_path / "d.npz", **{**arrays, **bad})
    with pytest.raises(DataError, match=match):
        load_dataset(f"npz:{tmp_path / 'd.npz'}")


def test_mwnet_trains_on_a_files_own_meta_set_with_its_labels_as_they_are(tmp_path, capsys, monkeypatch):
    """Every meta batch MW-Net's steps see comes from the file's x_meta (all pixels 7, so one value
    after normalisation; the training images are random) with its y_meta, 5 per class."""
    from methods.meta import MetaStep

    path = tmp_path / "d.npz"
    own_meta_npz(path)
    seen, step = [], MetaStep.__call__

    def recording(self, x, y, idx, x_meta, y_meta, *args, **kwargs):
        seen.append((x_meta.detach().clone(), y_meta.detach().clone(), x.detach().clone()))
        return step(self, x, y, idx, x_meta, y_meta, *args, **kwargs)

    monkeypatch.setattr(MetaStep, "__call__", recording)
    assert main(["run", "--methods", "mwnet", "--dataset", f"npz:{path}", "--noise", "real", "--imbalance", "1",
                 "--meta-per-class", "5", "--epochs", "1", "--store", str(tmp_path / "s.sqlite"),
                 "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    assert f"npz:{path} imb1 real" in capsys.readouterr().out
    assert seen
    meta_value = seen[0][0].flatten()[0]
    for x_meta, y_meta, x in seen:
        assert torch.all(x_meta == meta_value) and x.std() > 0  # the trusted images, not training ones
        assert torch.bincount(y_meta, minlength=4).max() <= 5 and set(y_meta.tolist()) <= {0, 1, 2, 3}
    labels = torch.cat([y for _, y, _ in seen])
    assert torch.bincount(labels[:20], minlength=4).tolist() == [5, 5, 5, 5]  # a pass over 5 per class
    run = Store(tmp_path / "s.sqlite", create=False).runs("done").iloc[0]
    assert json.loads(run["spec_json"])["meta_per_class"] == 5


def test_a_meta_set_is_never_drawn_from_labels_of_unknown_truth(tmp_path, capsys):
    """--noise real on a file with neither y_train_noisy nor x_meta: its labels are of unknown
    truth, so they give no clean meta set; a file's own meta set is used whole by default."""
    from bench.arguments import build_specs
    from bench.cli import make_parser

    rng = np.random.default_rng(0)
    plain = tmp_path / "plain.npz"
    np.savez(plain, x_train=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8), y_train=np.arange(40) % 4,
             x_test=rng.integers(0, 256, (8, 8, 8), dtype=np.uint8), y_test=np.arange(8) % 4)
    with pytest.raises(DataError, match="of unknown truth, so they cannot give a clean meta set"):
        make_biased(load_dataset(f"npz:{plain}"), BiasSpec(noise_type="real", meta_per_class=2))
    with pytest.raises(BenchError, match="cannot give a clean meta set"):  # before anything trains
        build_specs(make_parser().parse_args(["run", "--methods", "ce", "--dataset", f"npz:{plain}", "--noise",
                                              "real", "--meta-per-class", "2"]))
    assert make_biased(load_dataset(f"npz:{plain}"), BiasSpec(noise_type="none", meta_per_class=2)).y_meta.size
    own = tmp_path / "own.npz"
    own_meta_npz(own, meta_per_class=6)
    (spec,) = build_specs(make_parser().parse_args(["run", "--methods", "mwnet", "--dataset", f"npz:{own}",
                                                    "--noise", "real", "--imbalance", "1"]))
    assert spec.meta_per_class == 6  # all of the file's own meta set that stays balanced
    assert main(["data", "--dataset", f"npz:{own}", "--noise", "real"]) == 0
    assert "meta 24," in capsys.readouterr().out


def test_bench_data_says_which_labels_are_wrong_is_unknown_and_a_meta_set_missing_a_class(tmp_path, capsys):
    """A file without y_train_noisy: --noise real takes its labels of unknown truth, so bench data
    shows no noisy counts and no transitions rather than 'noisy 0' and a clean-looking matrix; a
    trusted set that lacks a class gives no meta set, said by bench data and by a run asking for one."""
    import json

    own = tmp_path / "own.npz"
    own_meta_npz(own, meta_per_class=6)
    assert main(["data", "--dataset", f"npz:{own}", "--noise", "real"]) == 0
    out = capsys.readouterr().out
    assert "noise real (which labels are wrong is not known: the file has no y_train_noisy)" in out
    assert "label transitions" not in out and " ? " in out
    assert main(["data", "--dataset", f"npz:{own}", "--noise", "real", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["noise_known"] is False
    human_noise_npz(tmp_path / "h.npz")
    assert main(["data", "--dataset", f"npz:{tmp_path / 'h.npz'}", "--noise", "real", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["noise_known"] is True
    # fmnist-mini: said to be clean before its lack of a trusted set
    assert main(["data", "--dataset", "fmnist-mini", "--noise", "real"]) == 2
    assert "fmnist-mini's labels are clean; noise 'real' is your own npz file's" in capsys.readouterr().err
    lacking = tmp_path / "lacking.npz"
    with np.load(own) as z:
        arrays = dict(z)
    keep = arrays["y_meta"] != 3
    np.savez(lacking, **{**arrays, "x_meta": arrays["x_meta"][keep], "y_meta": arrays["y_meta"][keep]})
    assert main(["data", "--dataset", f"npz:{lacking}"]) == 0
    out, err = capsys.readouterr()
    assert "meta 0 per class" in out and "own meta set (x_meta, y_meta) lacks a class" in err
    assert main(["run", "--methods", "mwnet", "--dataset", f"npz:{lacking}", "--meta-per-class", "2",
                 "--store", str(tmp_path / "s.sqlite"), "--dry-run"]) == 2
    assert "own meta set (x_meta, y_meta) has no sample of class 3" in capsys.readouterr().err


def test_a_noise_rate_left_nominal_on_real_noise_of_unknown_truth_is_said(tmp_path, capsys):
    """Co-teaching's tau and O2U-Net's drop rate at nominal (or realised) are 0 where the file does
    not say which labels are wrong: the method then removes nothing, and bench run says so once."""
    own = tmp_path / "own.npz"
    own_meta_npz(own)
    args = ["run", "--dataset", f"npz:{own}", "--noise", "real", "--store", str(tmp_path / "s.sqlite"),
            "--dry-run", "--seeds", "0,1"]
    assert main([*args, "--methods", "coteaching,o2u,ce"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "note:" in line]
    assert len(notes) == 2 and "coteaching.tau=nominal is 0 on npz:" in notes[0] and "o2u.drop_rate" in notes[1]
    assert main([*args, "--methods", "coteaching", "--set", "coteaching.tau=0.2"]) == 0
    assert "note:" not in capsys.readouterr().err  # the user's own estimate
    assert main([*args, "--methods", "coteaching", "--set", "coteaching.tau=realised"]) == 0
    assert "coteaching.tau=realised is 0 on npz:" in capsys.readouterr().err
    human_noise_npz(tmp_path / "h.npz")  # the file names its wrong labels: nominal is their fraction
    assert main([*args[:2], f"npz:{tmp_path / 'h.npz'}", *args[3:], "--methods", "coteaching"]) == 0
    assert "note:" not in capsys.readouterr().err
