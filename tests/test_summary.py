"""`bench table` (bench/summary.py): runs are averaged together only when they differ in nothing
but their seeds; other settings get rows of their own, labelled with what sets them apart."""

import json

import pandas as pd

from bench import tables
from bench.spec import RunSpec
from bench.summary import results_table, row_labels


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
                 (ce.replace(epochs=3, warmup_epochs=0, milestones=(1, 2)), "CE", 40.0))
    labels = row_labels(runs)
    assert labels[0] == labels[1] == "CE [epochs=20 milestones=8,10 precision=fp32 warmup_epochs=2]"
    assert labels[2] == "CE [epochs=20 milestones=8,10 precision=bf16 warmup_epochs=2]"
    assert labels[3] == "CE [epochs=3 milestones=1,2 precision=fp32 warmup_epochs=0]"
    table = results_table(runs)
    assert table.loc[labels[0]].tolist() == ["61.00 ± 1.41 (n=2)"]
    assert table.loc[labels[2]].tolist() == ["70.00 (n=1)"] and table.loc[labels[3]].tolist() == ["40.00 (n=1)"]


def test_one_setting_per_method_and_cell_keeps_the_plain_name():
    ce, focal = RunSpec("ce"), RunSpec("focal", params=(("gamma", 1.0),))
    runs = frame((ce, "CE", 60.0), (ce.replace(seed=1), "CE", 62.0), (focal, "Focal", 61.0),
                 # meta_per_class differs between cells (a per-dataset default): not a variant
                 (ce.replace(imbalance=1.0, meta_per_class=10), "CE", 80.0))
    assert row_labels(runs) == ["CE", "CE", "Focal", "CE"]
    table = results_table(runs)
    assert sorted(table.index) == ["CE", "Focal"] and table.shape == (2, 2)


def test_method_hyperparameters_tell_variants_apart():
    runs = frame((RunSpec("focal", params=(("gamma", 1.0),)), "Focal", 61.0),
                 (RunSpec("focal", params=(("gamma", 2.0),)), "Focal", 63.0))
    assert row_labels(runs) == ["Focal [focal.gamma=1]", "Focal [focal.gamma=2]"]


def test_paper_tables_mark_bf16_and_prefer_fp32():
    spec = RunSpec("ce", preset="paper", dataset="cifar10", model="resnet32", epochs=200, warmup_epochs=5,
                   milestones=(80, 100))
    assert tables._protocol_diff(spec.to_dict(), "paper") == ""
    assert tables._protocol_diff(spec.replace(precision="bf16").to_dict(), "paper") == "precision=bf16"
