"""The data CLI piece: argument parsing, output, one-line errors with exit code 2."""

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.data.bias import imbalance_profile
from bench.data.cli import DEFAULT_META_PER_CLASS, add_arguments, main, parse_noise
from bench.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_json_offline_fmnist_mini(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "nothing-here"))
    args = parse("--dataset", "fmnist-mini", "--imbalance", "10", "--noise", "flip2:0.4",
                 "--json")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1
    s = json.loads(out)
    assert s["dataset"] == "fmnist-mini"
    assert s["train_per_class"] == imbalance_profile(980, 10, 10)
    assert s["meta_per_class"] == [20] * 10 and s["test_per_class"] == [200] * 10
    assert s["spec"]["noise_type"] == "flip2" and s["spec"]["noise_rate"] == 0.4
    assert abs(s["noise_rate_realised"] - 0.4) < 0.05
    assert not (tmp_path / "nothing-here").exists()  # the embedded default touches no data dir


def test_table_output(capsys):
    assert main(parse("--imbalance", "50", "--noise", "uniform:0.2", "--seed", "3")) == 0
    out = capsys.readouterr().out
    assert "T-shirt/top" in out and "Ankle boot" in out and "total" in out
    assert "imbalance 50 (realised 51.58)" in out  # 980 / 19: the tail of fmnist-mini at 50
    assert "row clean, column observed" in out


def test_defaults():
    args = parse()
    assert (args.dataset, args.imbalance, args.noise, args.meta_per_class, args.seed,
            args.json, args.download, args.data_dir) == ("fmnist-mini", 1.0, "none", None, 0,
                                                         False, False, None)
    assert DEFAULT_META_PER_CLASS == {"fmnist-mini": 20, "fashion-mnist": 100, "cifar10": 100,
                                      "cifar100": 10, "npz": 0}


@pytest.mark.parametrize("text,expected", [
    ("none", ("none", 0.0)), ("flip2:0.4", ("flip2", 0.4)), ("uniform:0", ("uniform", 0.0)),
    ("uniform_freq:0.6", ("uniform_freq", 0.6)), ("none:0", ("none", 0.0)),
])
def test_parse_noise(text, expected):
    assert parse_noise(text) == expected


def test_a_flip_rate_past_the_true_labels_majority_is_warned(capsys):
    assert parse_noise("flip:0.5") == ("flip", 0.5) and parse_noise("flip2:0.6") == ("flip2", 0.6)
    assert capsys.readouterr().err == ""  # the true label still the most frequent
    assert parse_noise("flip:0.6") == ("flip", 0.6) and parse_noise("flip2:0.7") == ("flip2", 0.7)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "above 0.5, a flip target's label is more frequent" in err[0] and "above 0.667" in err[1]


@pytest.mark.parametrize("text", ["uniform:1.2", "uniform:1", "flip:-0.1", "flip2", "gauss:0.2",
                                  "flip2:abc", "flip:nan", "none:0.3", ""])
def test_parse_noise_rejects(text):
    with pytest.raises(DataError) as e:
        parse_noise(text)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("argv,match", [
    (("--dataset", "imagenet"), "unknown dataset"),
    (("--imbalance", "0.5"), "imbalance"),
    (("--noise", "flip2:1.5"), r"\[0, 1\)"),
    (("--meta-per-class", "5000"), "none to train on; choose 0..999"),
    (("--meta-per-class", "1000"), "none to train on; choose 0..999"),  # fmnist-mini: 1,000 per class
])
def test_main_bad_input(argv, match):
    with pytest.raises(DataError, match=match):
        main(parse(*argv))


def _run(*argv):
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_standalone_module_exit_code_2():
    r = _run("bench.data.cli", "--dataset", "nope")
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench: error: unknown dataset 'nope'")


@pytest.mark.skipif(not (REPO / "bench" / "__main__.py").exists(),
                    reason="bench/__main__.py not wired yet")
@pytest.mark.parametrize("argv", [("--dataset", "nope"), ("--noise", "uniform:1.2")])
def test_python_m_bench_data_exit_code_2(argv):
    r = _run("bench", "data", *argv)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench: error:")


@pytest.mark.parametrize("case,match", [
    ("std", "std must be finite, got std=[inf]"),
    ("channels first", "looks channels-first"),
    ("empty test", "x_test is empty"),
])
def test_bad_npz_is_a_one_line_error_before_training(tmp_path, case, match):
    # each of these once got past validation: inputs zeroed by std=inf, images read as
    # H = 3, W = 32, C = 32, a traceback in evaluation on an empty test set
    x, y = np.zeros((20, 8, 8), np.uint8), np.arange(20) % 2
    arrays = {"x_train": x, "y_train": y, "x_test": x[:4], "y_test": y[:4]}
    if case == "std":
        arrays.update(mean=np.array([0.5]), std=np.array([np.inf]))
    elif case == "channels first":
        arrays.update(x_train=np.zeros((20, 3, 8, 8), np.uint8), x_test=np.zeros((4, 3, 8, 8), np.uint8))
    else:
        arrays.update(x_test=x[:0], y_test=y[:0])
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=re.escape(match)) as e:
        main(parse("--dataset", f"npz:{tmp_path / 'd.npz'}", "--noise", "none"))
    assert "\n" not in str(e.value)


def test_table_output_shows_the_numbers_of_the_json_summary(capsys):
    """What `bench data` prints is what was realised: each class's train / noisy / observed / meta /
    test counts, the totals, the realised and expected noise rates (in that order) and the
    transitions, as the JSON summary holds them."""
    argv = ("--imbalance", "10", "--noise", "flip2:0.4", "--seed", "1")
    assert main(parse(*argv, "--json")) == 0
    s = json.loads(capsys.readouterr().out)
    assert main(parse(*argv)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert s["noise_rate_realised"] != s["noise_rate_expected"]
    assert (f"noise flip2 0.4 (realised {s['noise_rate_realised']:.4f}, expected {s['noise_rate_expected']:.4f}), "
            "meta 20 per class") in lines[1]
    cols = ("train_per_class", "noisy_per_class", "observed_per_class", "meta_per_class", "test_per_class")
    for i, name in enumerate(s["classes"]):
        (line,) = [ln for ln in lines if ln.startswith(f"{i:>5}  {name} ")]
        assert [int(v) for v in line.split()[-5:]] == [s[c][i] for c in cols], name
    (total,) = [ln for ln in lines if ln.split()[:1] == ["total"]]
    assert [int(v) for v in total.split()[-5:]] == [sum(s[c]) for c in cols]
    start = lines.index("label transitions over the training pool (row clean, column observed):")
    for i, row in enumerate(s["transition"]):
        assert [int(v) for v in lines[start + 2 + i].split()] == [i, *row]


def test_one_cell_only_errors_name_the_list(capsys):
    with pytest.raises(SystemExit):
        parse("--imbalance", "10,20")
    assert "bench data shows one cell, so give one value" in capsys.readouterr().err
    with pytest.raises(DataError, match="bench data shows one cell, so give one noise"):
        main(parse("--noise", "flip2:0.4,uniform:0.2"))


def _own_meta_npz(path, y_meta, k=4):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(k), 20)
    np.savez(path, x_train=rng.integers(0, 256, (len(y), 8, 8), dtype=np.uint8), y_train=y,
             x_test=rng.integers(0, 256, (2 * k, 8, 8), dtype=np.uint8), y_test=np.arange(2 * k) % k,
             x_meta=np.full((len(y_meta), 8, 8), 7, dtype=np.uint8), y_meta=np.asarray(y_meta))


def test_a_files_own_meta_set_is_the_default_and_the_users_meta_per_class_wins(tmp_path, capsys):
    _own_meta_npz(tmp_path / "d.npz", np.repeat(np.arange(4), 5))
    dataset = f"npz:{tmp_path / 'd.npz'}"
    assert main(parse("--dataset", dataset, "--json")) == 0
    assert json.loads(capsys.readouterr().out)["meta_per_class"] == [5] * 4  # all of the file's own meta set
    assert main(parse("--dataset", dataset, "--meta-per-class", "2", "--json")) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["meta_per_class"] == [2] * 4 and s["spec"]["meta_per_class"] == 2


def test_a_bad_cell_is_refused_before_any_data_is_loaded(tmp_path):
    """The cheap checks come first: a bad --imbalance on CIFAR-10 is named even where no CIFAR-10
    files are (not a missing-data error)."""
    with pytest.raises(DataError, match="imbalance"):
        main(parse("--dataset", "cifar10", "--data-dir", str(tmp_path / "empty"), "--imbalance", "0.5"))
