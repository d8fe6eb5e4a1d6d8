import re

import pytest

from bench.errors import BenchError
from bench.spec import (
    GRID_PRESET,
    GRIDS,
    PRESETS,
    PROTOCOL_FIELDS,
    Cell,
    RunSpec,
    apply_protocol_overrides,
    check_protocol,
    parse_sets,
    parse_value,
    scale_schedule,
)


def test_same_spec_same_key_and_key_is_stable_across_constructions():
    a = RunSpec(method="ce", params=(("gamma", 1.0),))
    b = RunSpec(method="ce", params=(("gamma", 1.0),))
    assert a.key() == b.key()
    assert RunSpec.from_dict(a.to_dict()).key() == a.key()


def test_any_changed_field_changes_the_key(changed_fields):
    base = RunSpec(method="focal", params=(("gamma", 1.0), ("loss", "softmax")))
    seen = {base.key()}
    for name, other in changed_fields(base, (("gamma", 2.0), ("loss", "softmax"))):
        key = other.key()
        assert key not in seen, name
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
    # 8 * 7 / 20 = 2.8 -> 3, 10 * 7 / 20 = 3.5 -> 4; 8 * 15 / 20 = 6, 10 * 15 / 20 = 7.5 -> 8
    assert scale_schedule(PRESETS["quick"], 7) == {"epochs": 7, "milestones": (3, 4), "warmup_epochs": 1}
    assert scale_schedule(PRESETS["quick"], 15) == {"epochs": 15, "milestones": (6, 8), "warmup_epochs": 2}
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


def test_a_spec_read_back_from_its_dict_is_the_same_spec():
    """The store keeps spec_json; a spec read back is equal (params sorted, lists back to tuples),
    not only of the same key."""
    spec = RunSpec(method="ce", params=(("b", (1, 2)), ("a", 0.5)), precision="bf16", train_on_meta=True,
                   data_sha256="0123456789abcdef")
    back = RunSpec.from_dict(spec.to_dict())
    assert back.key() == spec.key()
    assert RunSpec.from_dict({**spec.to_dict(), "params": {"a": 0.5, "b": [1, 2]}}) == RunSpec(
        method="ce", params=(("a", 0.5), ("b", (1, 2))), precision="bf16", train_on_meta=True,
        data_sha256="0123456789abcdef")
    assert RunSpec.from_dict({**spec.to_dict(), "params": {"b": [1, 2], "a": 0.5}}) == \
        RunSpec.from_dict({**spec.to_dict(), "params": {"a": 0.5, "b": [1, 2]}})


def test_epochs_scale_the_warmup_to_at_least_two_epochs_from_ten_epochs_on():
    # 2 * 10 / 20 = 1 epoch of warm-up would run at the full lr: 2 from 10 epochs on, as scaled below
    assert scale_schedule(PRESETS["quick"], 10) == {"epochs": 10, "milestones": (4, 5), "warmup_epochs": 2}
    assert scale_schedule(PRESETS["quick"], 9)["warmup_epochs"] == 1
    assert scale_schedule(PRESETS["paper"], 40)["warmup_epochs"] == 2  # 5 * 40 / 200 = 1
    assert scale_schedule(PRESETS["quick"], 40)["warmup_epochs"] == 4
    # a preset without a warm-up gets none at any length
    no_warmup = {**PRESETS["paper"], "warmup_epochs": 0}
    assert scale_schedule(no_warmup, 100) == {"epochs": 100, "milestones": (40, 50), "warmup_epochs": 0}
    # a milestone is at least epoch 1: 80 / 200 of one epoch rounds to 0
    assert scale_schedule(PRESETS["paper"], 1) == {"epochs": 1, "milestones": (1,), "warmup_epochs": 0}


def test_non_finite_and_non_boolean_texts_are_refused():
    for bad in ("inf", "-inf", "nan"):
        with pytest.raises(BenchError, match="cannot read"):
            parse_value(bad, 0.1)
    for bad in ("maybe", "2", ""):
        with pytest.raises(BenchError, match="cannot read"):
            parse_value(bad, True)
    assert parse_value("TRUE", False) is True and parse_value("off", True) is False
    with pytest.raises(BenchError):
        parse_value("2.5", 3)  # an int setting takes no fraction


def test_list_settings_refuse_empty_items_and_keep_the_type_of_their_default():
    assert parse_value("60, 80", (80, 100)) == (60, 80)
    for text in ("60, 80,", "60,,80", ","):  # a value left out is not silently dropped
        with pytest.raises(BenchError, match="as tuple"):
            parse_value(text, (80, 100))
    assert parse_value("0.5,1", (0.25, 2.0)) == (0.5, 1.0) and isinstance(parse_value("1", (0.5,))[0], float)
    assert parse_value("3", ()) == (3,)


def test_a_setting_without_a_default_is_read_as_int_float_none_or_text():
    assert parse_value("3", None) == 3 and type(parse_value("3", None)) is int
    assert parse_value("2.5", None) == 2.5
    assert parse_value("None", None) is None and parse_value("adam", None) == "adam"


def test_a_blank_set_value_is_malformed():
    for bad in ["lr= ", " =0.1"]:
        with pytest.raises(BenchError, match="malformed --set"):
            parse_sets([bad])
    assert parse_sets([" lr = 0.05 ", "focal.gamma= 2"]) == ({"lr": "0.05"}, {"focal": {"gamma": "2"}})
    assert parse_sets(["lr=0.05", "lr=0.05 "]) == ({"lr": "0.05"}, {})  # the same value twice is one
    with pytest.raises(BenchError, match="--set focal.gamma is given twice"):
        parse_sets(["focal.gamma=2", "focal.gamma=1"])


def _protocol(**changes):
    return {**PRESETS["quick"], "meta_per_class": 20, **changes}


@pytest.mark.parametrize("changes, message", [
    (dict(lr=0.0), "lr must be positive"),
    (dict(momentum=1.0), "momentum must be in [0, 1)"),
    (dict(momentum=-0.1, nesterov=False), "momentum must be in [0, 1)"),
    (dict(lr_decay=0.0), "lr_decay must be positive"),
    (dict(meta_batch_size=0), "meta_batch_size must be at least 1"),
    (dict(epochs=0, milestones=(), warmup_epochs=0), "epochs must be at least 1"),
    (dict(milestones=(0, 10)), "milestones must be increasing positive epochs"),
    (dict(milestones=(8, 8)), "milestones must be increasing positive epochs"),
    (dict(milestones=(8, 21)), "milestones must be at most the 20 epochs"),
    (dict(warmup_epochs=21), "warmup_epochs must be at most the 20 epochs"),
    (dict(warmup_epochs=-1), "warmup_epochs must be non-negative"),
    (dict(meta_per_class=-1), "meta_per_class must be non-negative"),
])
def test_protocol_values_just_past_their_bounds_are_refused(changes, message):
    with pytest.raises(BenchError, match=re.escape(message)):
        check_protocol(_protocol(**changes))


def test_protocol_values_at_their_bounds_are_taken():
    for changes in (dict(weight_decay=0.0), dict(momentum=0.0, nesterov=False), dict(milestones=(8, 20)),
                    dict(milestones=()), dict(warmup_epochs=20), dict(warmup_epochs=0), dict(meta_per_class=0),
                    dict(epochs=1, milestones=(1,), warmup_epochs=1), dict(batch_size=1, meta_batch_size=1)):
        check_protocol(_protocol(**changes))  # no error


def test_the_seeds_data_and_run_identity_are_not_protocol_settings():
    assert set(PROTOCOL_FIELDS).isdisjoint({"method", "dataset", "imbalance", "noise_type", "noise_rate", "seed",
                                            "data_seed", "preset", "params", "data_sha256"})
    assert {"lr", "epochs", "milestones", "warmup_epochs", "meta_per_class", "precision", "train_on_meta"} <= \
        set(PROTOCOL_FIELDS)
    with pytest.raises(BenchError, match="unknown setting 'data_sha256'"):
        apply_protocol_overrides(dict(PRESETS["quick"]), {"data_sha256": "0123"})
    with pytest.raises(BenchError, match="unknown setting 'seed'"):
        apply_protocol_overrides(dict(PRESETS["quick"]), {"seed": "3"})


def test_each_paper_grid_runs_under_the_paper_preset_and_the_quick_grids_under_quick():
    assert set(GRID_PRESET) == set(GRIDS)
    assert {name for name, preset in GRID_PRESET.items() if preset == "quick"} == {"quick", "quick-grid"}
    assert all(GRID_PRESET[name] == "paper" for name in ("cifar10", "cifar100", "table2", "table3", "ablation"))
