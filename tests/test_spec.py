import dataclasses

import pytest

from bench.errors import BenchError
from bench.spec import GRIDS, PRESETS, Cell, RunSpec, parse_sets, parse_value, scale_schedule


def test_same_spec_same_key_and_key_is_stable_across_constructions():
    a = RunSpec(method="ce", params=(("gamma", 1.0),))
    b = RunSpec(method="ce", params=(("gamma", 1.0),))
    assert a.key() == b.key()
    assert RunSpec.from_dict(a.to_dict()).key() == a.key()


def test_any_changed_field_changes_the_key():
    base = RunSpec(method="focal", params=(("gamma", 1.0), ("loss", "softmax")))
    seen = {base.key()}
    for f in dataclasses.fields(RunSpec):
        value = getattr(base, f.name)
        if f.name == "params":
            changed = (("gamma", 2.0), ("loss", "softmax"))
        elif f.name == "precision":
            changed = "bf16"
        elif isinstance(value, bool):
            changed = not value
        elif isinstance(value, (int, float)):
            changed = value + 1
        elif isinstance(value, tuple):
            changed = value + (99,)
        else:
            changed = value + "x"
        key = base.replace(**{f.name: changed}).key()
        assert key not in seen, f.name
        seen.add(key)


def test_a_changed_method_hyperparameter_changes_the_key():
    a = RunSpec(method="focal", params=(("gamma", 1.0),))
    assert a.key() != a.replace(params=(("gamma", 1.5),)).key()


def test_key_is_the_hash_of_the_canonical_json():
    # The key is part of every store ever written: changing the hashing silently orphans results.
    import hashlib
    import json
    spec = RunSpec(method="ce", params=(("b", (1, 2)), ("a", 0.5)))
    blob = json.dumps(spec.to_dict(), sort_keys=True, separators=(",", ":"))
    assert spec.key() == hashlib.sha256(blob.encode()).hexdigest()[:16]
    assert json.loads(blob)["params"] == {"a": 0.5, "b": [1, 2]}



def test_default_precision_stays_out_of_the_key():
    """Keys of runs stored before ``precision`` existed must still match: at fp32 the key is the
    hash of the spec's fields without it (the dict written out by hand here)."""
    import hashlib
    import json
    fields = dict(method="ce", dataset="fmnist-mini", imbalance=10.0, noise_type="flip2", noise_rate=0.4,
                  meta_per_class=20, seed=0, data_seed=0, preset="quick", model="small_cnn", init="kaiming",
                  epochs=20, batch_size=128, meta_batch_size=128, lr=0.1, momentum=0.9, nesterov=True,
                  weight_decay=5e-4, warmup_epochs=2, milestones=[8, 10], lr_decay=0.1, params={})
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    assert RunSpec("ce").key() == hashlib.sha256(blob.encode()).hexdigest()[:16]
    bf16 = json.dumps({**fields, "precision": "bf16"}, sort_keys=True, separators=(",", ":"))
    assert RunSpec("ce", precision="bf16").key() == hashlib.sha256(bf16.encode()).hexdigest()[:16]

def test_zero_noise_cells_of_any_type_are_the_same_cell():
    assert Cell("cifar10", 50.0, "flip2", 0.0) == Cell("cifar10", 50.0, "none", 0.0)


@pytest.mark.parametrize("imb,kind,rate", [(0.5, "flip2", 0.2), (10, "pair", 0.2), (10, "flip2", 1.0),
                                            (10, "uniform", -0.1), (float("inf"), "none", 0.0)])
def test_bad_cells_are_rejected(imb, kind, rate):
    with pytest.raises(BenchError):
        Cell("cifar10", imb, kind, rate)


def test_paper_grids_match_the_protocol():
    c10 = GRIDS["cifar10"]
    assert len(c10) == 18 and {c.imbalance for c in c10} == {1, 10, 20, 50, 100, 200}
    assert {(c.noise_type, c.noise_rate) for c in c10} == {("none", 0.0), ("flip2", 0.2), ("flip2", 0.4)}
    c100 = GRIDS["cifar100"]
    assert len(c100) == 12 and {c.noise_type for c in c100} == {"none", "uniform"}
    assert set(GRIDS["table2"]) <= set(c10) and set(GRIDS["table3"]) <= set(c100)


def test_paper_preset_is_the_protocol():
    p = PRESETS["paper"]
    assert (p["model"], p["epochs"], p["lr"], p["momentum"], p["nesterov"], p["weight_decay"]) == \
        ("resnet32", 200, 0.1, 0.9, True, 5e-4)
    assert p["milestones"] == (80, 100) and p["warmup_epochs"] == 5 and p["batch_size"] == 128


def test_epochs_override_scales_the_schedule():
    assert scale_schedule(PRESETS["paper"], 100) == {"epochs": 100, "milestones": (40, 50), "warmup_epochs": 2}
    assert scale_schedule(PRESETS["quick"], 20)["milestones"] == (8, 10)
    # rounded, not truncated: 5 * 140 / 200 = 3.5 -> 4, 80 * 0.7 = 56, 100 * 0.7 = 70
    assert scale_schedule(PRESETS["paper"], 140) == {"epochs": 140, "milestones": (56, 70), "warmup_epochs": 4}
    with pytest.raises(BenchError):
        scale_schedule(PRESETS["quick"], 0)


def test_parse_value_and_sets():
    assert parse_value("2", 1.0) == 2.0 and parse_value("3", 1) == 3 and parse_value("no", True) is False
    assert parse_value("60,80", (80, 100)) == (60, 80)
    with pytest.raises(BenchError):
        parse_value("abc", 1.0)
    with pytest.raises(BenchError):
        parse_value("nan", 1.0)
    protocol, per_method = parse_sets(["lr=0.05", "focal.gamma=2"])
    assert protocol == {"lr": "0.05"} and per_method == {"focal": {"gamma": "2"}}
    for bad in ["lr", "=3", "lr="]:
        with pytest.raises(BenchError):
            parse_sets([bad])
