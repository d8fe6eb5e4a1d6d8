"""`bench run --fuse K` (bench/fused_runs.py): seeds of one cell trained as one fused network are
the runs trained alone, each with its own data, weights, history and result."""

import itertools
import json
import math

import numpy as np
import pytest
import torch

import bench.execute
import methods
from bench import executors
from bench.cli import main
from bench.data.loader import Loader
from bench.errors import BenchError
from bench.execute import checkpoint_path, execute
from bench.fused_runs import FusedGroup, FusedRun, execute_fused, group_runs, note_members, sweep_group_checkpoints
from bench.spec import RunSpec
from bench.store import Store
from methods.base import Run, params_items

CPU = torch.device("cpu")


def load_data(spec):
    """bench.execute.load_data, looked up at each call (the small_pools fixture replaces it)."""
    return bench.execute.load_data(spec)


def _spec(seed, method="ce", epochs=1, **changes):
    return RunSpec(method=method, epochs=epochs, seed=seed, data_seed=seed, **changes)


def _alone(spec):
    """The run trained alone (as bench.execute.execute sets it up): its model and history."""
    torch.manual_seed(spec.seed)
    run = Run(spec=spec, data=load_data(spec), device=CPU, params=methods.get(spec.method).params_from_spec(spec))
    model = methods.get(spec.method)(run.params).fit(run)
    return model.state_dict(), run.history, run.records


def _gap(a: dict, b: dict) -> float:
    """||a - b|| / ||b|| over every floating tensor of two state dicts."""
    names = [k for k in b if b[k].is_floating_point()]
    return float(torch.cat([(a[k] - b[k]).flatten() for k in names]).norm()
                 / torch.cat([b[k].flatten() for k in names]).norm())


def test_runs_that_differ_only_in_their_seeds_are_grouped_up_to_k():
    ce = [_spec(s) for s in range(5)]
    other_cell = _spec(0, imbalance=1.0)
    realised = params_items(methods.get("o2u").resolve_params("paper", {"drop_rate": "realised",
                                                                       "retrain": "pretrained"}))
    alone = [_spec(s, "o2u", params=realised) for s in range(2)]
    focal = _spec(0, "focal")
    queue = group_runs([ce[0], alone[0], ce[1], other_cell, ce[2], ce[3], alone[1], ce[4], focal], 2)
    assert queue == [FusedGroup((ce[0], ce[1])), alone[0], other_cell, FusedGroup((ce[2], ce[3])),
                     alone[1], ce[4], focal]  # a group of one is the run; these O2U-Net runs never fuse
    assert group_runs(ce, 1) == ce
    assert group_runs(ce, 8) == [FusedGroup(tuple(ce))]
    assert FusedGroup((ce[0], ce[1])).key() != FusedGroup((ce[1], ce[0])).key() != ce[0].key()
    with pytest.raises(Exception, match="--fuse must be at least 1"):
        group_runs(ce, 0)


def _fit_fused(specs, layout="rows"):
    params = methods.get(specs[0].method).params_from_spec(specs[0])
    fused_run = FusedRun([Run(spec=s, data=load_data(s), device=CPU, params=params) for s in specs], layout)
    return methods.get(specs[0].method)(params).fit(fused_run), fused_run


FUSABLE = [name for name in methods.names() if methods.get(name).fusable]
# CurveNet's probe stage, shortened: 4 epochs (2 at lr 0.1, one 0.01 / 0.001 period), 2 curve values
SHORT_PROBE = {"probe_epochs": "2", "half_period": "1", "periods": "1", "cycle_batch_size": "64"}


def _curvenet_spec(seed, **settings):
    """A CurveNet run of 2 epochs whose first lr drop is at epoch 1: one epoch of meta steps, one
    of fixed-weight steps, after the short probe."""
    params = params_items(methods.get("curvenet").resolve_params("quick", {**SHORT_PROBE, **settings}))
    return _spec(seed, "curvenet", epochs=2, milestones=(1,), params=params)


def test_the_fusable_methods_are_the_documented_ones(capsys):  # README and `bench run --help` name them
    assert FUSABLE == ["aum", "cb", "ce", "coteaching", "curvenet", "focal", "ldam_drw", "mwnet", "o2u"]
    assert main(["list"]) == 0
    assert ("fused network by `bench run --fuse K`: aum, cb, ce, coteaching, curvenet, focal, "
            "ldam_drw, mwnet, o2u (not with drop_rate=realised, or nominal on real noise, and retrain=pretrained)\n"
            ) in capsys.readouterr().out


def test_only_o2u_runs_retrained_from_a_fused_network_at_a_realised_rate_are_not_fused():
    plain = [_curvenet_spec(s) for s in (0, 1)]
    pseudo = [_curvenet_spec(s, meta_set="pseudo") for s in (0, 1)]
    drw = [_curvenet_spec(s, drw="true") for s in (0, 1)]
    assert group_runs(plain + pseudo + drw, 2) == [FusedGroup(tuple(plain)), FusedGroup(tuple(pseudo)),
                                                   FusedGroup(tuple(drw))]
    # each run's own realised rate: O2U-Net's subsets of sizes of their own cannot retrain from
    # the fused pre-trained network; from scratch each run retrains alone (Run.alone), and
    # Co-teaching's runs each keep their own count
    params = params_items(methods.get("o2u").resolve_params("paper", {"drop_rate": "realised",
                                                                     "retrain": "pretrained"}))
    pretrained = [_spec(s, "o2u", params=params) for s in (0, 1)]
    assert group_runs(pretrained, 2) == pretrained
    for method, settings in (("o2u", {"drop_rate": "realised"}), ("coteaching", {"tau": "realised"})):
        params = params_items(methods.get(method).resolve_params("paper", settings))
        realised = [_spec(s, method, params=params) for s in (0, 1)]
        assert group_runs(realised, 2) == [FusedGroup(tuple(realised))]


def _check_each_run_as_alone(model, fused_run, alone):
    """Each member of a fused group against its run trained alone: weights, history, records."""
    for k, (state, history, records) in enumerate(alone):
        mine = fused_run.unfused(model, k).state_dict()
        assert _gap(mine, state) < 1e-9, k
        assert _gap(mine, alone[1 - k][0]) > 0.1  # the runs differ: the check can tell them apart
        mine = fused_run.members[k]
        assert [(h["stage"], h["epoch"]) for h in mine.history] == [(h["stage"], h["epoch"]) for h in history]
        for row, theirs in zip(mine.history, history):  # loss (MW-Net: meta loss, mean weight too), accuracy
            assert row.keys() == theirs.keys()
            assert all(row[m] == pytest.approx(theirs[m], rel=1e-9) for m in row if isinstance(row[m], float))
        assert mine.records.keys() == records.keys()  # final weights (CurveNet: curves too): each run's own pool
        for name, values in records.items():
            assert np.allclose(mine.records[name], values, rtol=1e-9, atol=1e-12, equal_nan=True), name


# the rows layout is the CPU's; the runs layout (CUDA's, in channels_last there) is checked here
# on the method with the most parts (backbone, weighting net, meta cycle, records)
# (and on LDAM's cosine classifier, a fused layer of the method's own)
@pytest.mark.parametrize("method,layout", [(m, "rows") for m in FUSABLE if m != "curvenet"]
                         + [("mwnet", "runs"), ("ldam_drw", "runs")])
def test_each_run_of_a_fused_group_trains_as_it_does_alone(method, layout, float64, small_pools, monkeypatch):
    # in float64 (models, and batches from the loader) rounding is out of the way: in float32
    # it grows chaotically over an epoch's steps to about 1e-4 of the weights (ill-conditioned
    # BatchNorm bias gradients differ by 1e-4 at the first step), here it stays near 1e-16
    normalise = Loader.normalise
    monkeypatch.setattr(Loader, "normalise", lambda self, xb: normalise(self, xb).double())
    # LDAM-DRW reweights from epoch 0; Co-teaching keeps 70% of each run's rows in its second epoch;
    # O2U-Net: 1 pre-training epoch, 2 cyclic, each run drops its own 20%, 1 epoch on its own rest
    # AUM: 1 epoch per scoring run, then each run retrains alone on its own kept subset
    settings = {"ldam_drw": {"drw_epoch": "0"}, "coteaching": {"t_k": "1", "tau": "0.3"}, "aum": {"aum_epochs": "1"},
                "o2u": {"stage1_epochs": "1", "cycle_length": "2", "cycles": "1", "cycle_batch_size": "64",
                        "drop_rate": "0.2"}}.get(method, {})
    params = params_items(methods.get(method).resolve_params("paper", settings))
    specs = [_spec(s, method, epochs=2 if method == "coteaching" else 1, params=params) for s in (0, 1)]
    alone = [_alone(spec) for spec in specs]
    model, fused_run = _fit_fused(specs, layout)
    _check_each_run_as_alone(model, fused_run, alone)
    if method == "aum":  # the runs keep subsets of different sizes (so they retrain alone)
        assert len({int(run.records["kept"].sum()) for run in fused_run.members}) == 2


def test_fused_o2u_runs_with_their_own_realised_rates_retrain_alone_as_they_do_alone(float64, small_pools,
                                                                                       monkeypatch):
    """O2U-Net with drop_rate=realised: each run drops its own realised noise rate's share, so the
    kept subsets differ in size and each run retrains alone (Run.alone) after the fused stages."""
    normalise = Loader.normalise
    monkeypatch.setattr(Loader, "normalise", lambda self, xb: normalise(self, xb).double())
    params = params_items(methods.get("o2u").resolve_params("paper", {
        "stage1_epochs": "1", "cycle_length": "2", "cycles": "1", "cycle_batch_size": "64", "drop_rate": "realised"}))
    specs = [_spec(s, "o2u", params=params) for s in (0, 2)]  # 192 and 210 noisy of 501 (seeds 0 and 1: 192 both)
    alone = [_alone(spec) for spec in specs]
    model, fused_run = _fit_fused(specs)
    _check_each_run_as_alone(model, fused_run, alone)
    assert len({int(run.records["kept"].sum()) for run in fused_run.members}) == 2


def test_fused_coteaching_runs_with_their_own_realised_rates_keep_their_own_counts(float64, small_pools,
                                                                                     monkeypatch):
    """Co-teaching with tau=realised: each run's forget rate from its own realised noise rate, so
    from the second epoch each run keeps its own count of its rows (78 and 74 of 128 here)."""
    normalise = Loader.normalise
    monkeypatch.setattr(Loader, "normalise", lambda self, xb: normalise(self, xb).double())
    params = params_items(methods.get("coteaching").resolve_params("paper", {"t_k": "1", "tau": "realised"}))
    specs = [_spec(s, "coteaching", epochs=2, params=params) for s in (0, 2)]  # 192 and 210 noisy of 501
    alone = [_alone(spec) for spec in specs]
    model, fused_run = _fit_fused(specs)
    _check_each_run_as_alone(model, fused_run, alone)
    assert [run.history[-1]["remember_rate"] for run in fused_run.members] == pytest.approx([1 - 192 / 501,
                                                                                            1 - 210 / 501])


def test_each_curvenet_run_of_a_fused_group_trains_as_it_does_alone(float64, small_pools, monkeypatch):
    """CurveNet's two stages fused: the probes from each run's own probe seed (model, order, crops),
    each run's curves centred within its own classes, the CurveNets fused (embeddings too), meta
    steps to the first lr drop, then fixed-weight steps, and with +DRW (from epoch first_drop + 1,
    the third here) each run's weights times the class-balanced weights of its own counts; float64
    as above."""
    normalise = Loader.normalise
    monkeypatch.setattr(Loader, "normalise", lambda self, xb: normalise(self, xb).double())
    params = params_items(methods.get("curvenet").resolve_params("quick", {**SHORT_PROBE, "drw": "true"}))
    specs = [_spec(s, "curvenet", epochs=3, milestones=(1,), params=params) for s in (0, 1)]
    alone = [_alone(spec) for spec in specs]
    assert {row["stage"] for row in alone[0][1]} == {"probe", "allocate"}
    _check_each_run_as_alone(*_fit_fused(specs), alone)


def test_fused_curvenet_runs_learn_from_their_own_pseudo_meta_sets_as_they_do_alone(float64, small_pools,
                                                                                   monkeypatch):
    """With ``meta_set=pseudo`` each run's meta batches come from its own picks: the 10 samples
    of each observed class with its lowest mean probe loss (its rows of the fused probe); float64."""
    normalise = Loader.normalise
    monkeypatch.setattr(Loader, "normalise", lambda self, xb: normalise(self, xb).double())
    specs = [_curvenet_spec(s, meta_set="pseudo") for s in (0, 1)]
    params = methods.get("curvenet").params_from_spec(specs[0])
    assert {methods.get("curvenet").fused_sizes(params, load_data(s)) for s in specs} == {(100,)}
    alone = [_alone(spec) for spec in specs]
    model, fused_run = _fit_fused(specs)
    _check_each_run_as_alone(model, fused_run, alone)


def test_a_group_whose_pseudo_meta_sets_differ_in_size_trains_one_run_at_a_time(small_pools, capsys):
    """Where a class has fewer samples than ``pseudo_per_class`` the picks' number is the run's
    own (here 30 per class, where the tail classes have 17 to 25 samples, their numbers varying
    with the runs' label noise: 287 and 275 picks); such a group trains its runs alone, each as
    ``execute`` trains it."""
    specs = [_curvenet_spec(s, meta_set="pseudo", pseudo_per_class="30") for s in (0, 1)]
    params = methods.get("curvenet").params_from_spec(specs[0])
    sizes = [methods.get("curvenet").fused_sizes(params, load_data(s)) for s in specs]
    assert sizes == [(287,), (275,)]
    results = execute_fused(FusedGroup(tuple(specs)), device=CPU)
    assert "of different sizes: its group trains one run at a time" in capsys.readouterr().err
    for spec, result in zip(specs, results):
        assert result.status == "done" and "fused" not in result.env
        assert result.metrics == execute(spec, device=CPU, cache_dir=None).metrics


def test_a_fused_curvenet_group_keeps_each_runs_cached_probe(small_pools, tmp_path):
    """Probe curves are cached per run: a fused group writes each run's, a later group (here other
    allocate settings, the same probes) reads them and trains no probe; a group where only some
    runs' curves are cached trains the probes fused and each cached run keeps its own curves (and,
    as alone, no probe rows)."""
    def fused(specs):
        params = methods.get("curvenet").params_from_spec(specs[0])
        fused_run = FusedRun([Run(spec=s, data=load_data(s), device=CPU, params=params, cache_dir=tmp_path)
                              for s in specs], "rows")
        methods.get("curvenet")(params).fit(fused_run)
        return fused_run

    specs = [_curvenet_spec(s) for s in (0, 1)]
    first = fused(specs)
    caches = sorted((tmp_path / "curvenet_probe").glob("*.npz"))
    assert len(caches) == 2
    assert all(any(row["stage"] == "probe" for row in run.history) for run in first.members)
    again = fused([_curvenet_spec(s, skip_layers="3") for s in (0, 1)])
    assert all(row["stage"] == "allocate" for run in again.members for row in run.history)
    for mine, theirs in zip(again.members, first.members):
        np.testing.assert_array_equal(mine.records["curve"], theirs.records["curve"])
    caches[0].unlink()  # one run's curves are gone
    partly = fused([_curvenet_spec(s, skip_layers="3") for s in (0, 1)])
    trained = [any(row["stage"] == "probe" for row in run.history) for run in partly.members]
    assert sorted(trained) == [False, True] and len(list((tmp_path / "curvenet_probe").glob("*.npz"))) == 2
    kept = trained.index(False)
    np.testing.assert_array_equal(partly.members[kept].records["curve"], first.members[kept].records["curve"])
    redone = trained.index(True)
    assert np.allclose(partly.members[redone].records["curve"], first.members[redone].records["curve"], atol=1e-4)


def test_a_run_that_diverges_fails_alone_and_its_group_trains_on(monkeypatch):
    specs = [_spec(s) for s in (0, 1)]
    fuse_model = FusedRun.model

    def poisoned(self):  # run 1's first convolution is NaN from the start
        model = fuse_model(self)
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        with torch.no_grad():
            conv.weight.view(2, -1)[1] = float("nan")
        return model

    monkeypatch.setattr(FusedRun, "model", poisoned)
    ok, diverged = execute_fused(FusedGroup(tuple(specs)), device=CPU)
    assert diverged.status == "failed" and diverged.error == "diverged at train epoch 1: loss is nan"
    assert diverged.history == []
    assert ok.status == "done" and ok.env["fused"] == 2
    reference = execute(specs[0], device=CPU, cache_dir=None)
    assert ok.metrics["acc_last"] == pytest.approx(reference.metrics["acc_last"], abs=1.0)
    assert ok.history[-1]["loss"] == pytest.approx(reference.history[-1]["loss"], rel=1e-3)


def test_a_run_whose_statistics_blow_up_while_its_loss_stays_finite_fails_alone(monkeypatch):
    """Run 1's BatchNorm running variance is infinite (as a huge learning rate leaves it): its
    training loss stays finite, but its test predictions would be one class; it fails with the
    tensor named, and the other run of the group is done."""
    specs = [_spec(s) for s in (0, 1)]
    fuse_model = FusedRun.model

    def blown(self):
        model = fuse_model(self)
        bn = next(m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
        bn.running_var.view(2, -1)[1] = float("inf")
        return model

    monkeypatch.setattr(FusedRun, "model", blown)
    ok, diverged = execute_fused(FusedGroup(tuple(specs)), device=CPU)
    assert diverged.status == "failed" and diverged.error.startswith("diverged at train epoch 1: ")
    assert diverged.error.endswith("running_var holds NaN or inf")
    assert ok.status == "done"


def test_a_group_whose_runs_all_diverge_stops_with_each_reason(monkeypatch):
    specs = [_spec(s, epochs=3) for s in (0, 1)]
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda *a, **k: torch.tensor(math.inf,
                                                                                           requires_grad=True))
    results = execute_fused(FusedGroup(tuple(specs)), device=CPU)
    assert [r.status for r in results] == ["failed", "failed"]
    assert all(r.error == "diverged at train epoch 1: loss is inf" for r in results)


def test_a_run_whose_stage_alone_fails_fails_alone(monkeypatch, small_pools):
    """A stage the members train one at a time (AUM's retrain, Run.alone): a run it fails for (the
    method refuses its data) is recorded as failed with the reason, the other trains on."""
    import methods.aum

    retrain = methods.aum.retrain

    def refuse_run_0(run):
        if run.spec.seed == 0:
            raise BenchError("AUM removed every training sample")
        return retrain(run)

    monkeypatch.setattr(methods.aum, "retrain", refuse_run_0)
    params = params_items(methods.get("aum").resolve_params("paper", {"aum_epochs": "1"}))
    refused, ok = execute_fused(FusedGroup(tuple(_spec(s, "aum", params=params) for s in (0, 1))), device=CPU)
    assert refused.status == "failed" and refused.error == "AUM removed every training sample"
    assert ok.status == "done" and ok.env["fused"] == 2 and ok.history[-1]["stage"] == "retrain"


def test_runs_whose_pools_differ_in_size_train_one_at_a_time(monkeypatch):
    import bench.execute

    real = bench.execute.load_data
    monkeypatch.setattr(bench.execute, "load_data", lambda spec, data_dir=None: (
        real(spec, data_dir).with_meta_in_pool() if spec.seed == 1 else real(spec, data_dir)))
    notes = []
    results = execute_fused(FusedGroup((_spec(0), _spec(1))), device=CPU, progress=notes.append)
    assert [r.status for r in results] == ["done", "done"]
    assert all("fused" not in r.env for r in results)
    assert len(results[1].samples["observed_label"]) > len(results[0].samples["observed_label"])
    assert any("its group trains one run at a time" in n.get("note", "") for n in notes)


class Killed(BaseException):
    """A kill: not caught as a run's failure."""


# CurveNet is killed in its probe's second epoch (the probe's own generators and RNG streams resume)
@pytest.mark.parametrize("method", ["ce", "curvenet"])
def test_a_killed_group_resumes_from_its_checkpoint_bit_for_bit(method, tmp_path, small_pools):
    specs = [_spec(s, epochs=3) if method == "ce" else _curvenet_spec(s) for s in (0, 1)]
    group = FusedGroup(tuple(specs))
    reference = execute_fused(group, device=CPU, cache_dir=tmp_path / "ref", checkpoint_every_s=0)

    def kill_in_the_second_epoch(row):
        if row.get("epoch") == 1:
            raise Killed

    with pytest.raises(Killed):
        execute_fused(group, device=CPU, cache_dir=tmp_path, checkpoint_every_s=0, progress=kill_in_the_second_epoch)
    assert checkpoint_path(group, tmp_path).exists()
    notes = []
    resumed = execute_fused(group, device=CPU, cache_dir=tmp_path, checkpoint_every_s=0, progress=notes.append)
    assert any("resuming its fused group" in n.get("note", "") for n in notes)
    for mine, theirs in zip(resumed, reference):
        assert mine.status == theirs.status == "done"
        assert mine.history == theirs.history and mine.metrics == theirs.metrics
        for name, values in theirs.values.items():
            np.testing.assert_array_equal(mine.values[name], values, err_msg=name)


def test_a_fused_aum_group_killed_in_a_runs_retrain_resumes_there_bit_for_bit(tmp_path, small_pools):
    """AUM's runs retrain alone (Run.alone), each checkpointed in the group's checkpoint: a kill in
    the second run's retrain resumes there, the first run's retrain and the scoring runs not
    trained again."""
    params = params_items(methods.get("aum").resolve_params("paper", {"aum_epochs": "2"}))
    specs = [_spec(s, "aum", epochs=3, params=params) for s in (0, 1)]
    group = FusedGroup(tuple(specs))
    reference = execute_fused(group, device=CPU, cache_dir=tmp_path / "ref", checkpoint_every_s=0)
    assert [row["stage"] for row in reference[1].history] == ["aum1", "aum1", "aum1_threshold", "aum2", "aum2",
                                                               "aum2_threshold", "retrain", "retrain", "retrain"]

    def kill_in_the_second_runs_retrain(row):
        if row.get("key") == specs[1].key() and row.get("stage") == "retrain" and row.get("epoch") == 1:
            raise Killed

    with pytest.raises(Killed):
        execute_fused(group, device=CPU, cache_dir=tmp_path, checkpoint_every_s=0,
                      progress=kill_in_the_second_runs_retrain)
    trained = []
    resumed = execute_fused(group, device=CPU, cache_dir=tmp_path, checkpoint_every_s=0, progress=trained.append)
    assert [(row["key"], row["stage"], row["epoch"]) for row in trained if "epoch" in row] == [
        (specs[0].key(), "aum1_threshold", 0), (specs[1].key(), "aum1_threshold", 0),  # logged between stages
        (specs[0].key(), "aum2_threshold", 0), (specs[1].key(), "aum2_threshold", 0),
        (specs[1].key(), "retrain", 1), (specs[1].key(), "retrain", 2)]
    for mine, theirs in zip(resumed, reference):
        assert mine.status == theirs.status == "done"
        assert mine.history == theirs.history and mine.metrics == theirs.metrics
        for name, values in theirs.values.items():
            np.testing.assert_array_equal(mine.values[name], values, err_msg=name)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_bench_run_fuse_stores_every_run_of_every_group(jobs, tmp_path, capsys):
    store = tmp_path / "store.sqlite"
    o2u_unfused = ["o2u.drop_rate=realised", "o2u.retrain=pretrained", "o2u.stage1_epochs=1", "o2u.cycles=1",
                   "o2u.cycle_length=1", "o2u.cycle_batch_size=128"]  # 3 epochs, which --fuse leaves alone
    code = main(["run", "--methods", "mwnet,o2u", *[a for x in o2u_unfused for a in ("--set", x)], "--seeds", "0,1,2",
                 "--epochs", "1", "--quiet", "--fuse", "2", "--imbalance", "100", "--jobs", jobs, "--store", str(store),
                 "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert ("--fuse applies to aum, cb, ce, coteaching, curvenet, focal, ldam_drw, mwnet, o2u (not with drop_rate="
            "realised, or nominal on real noise, and retrain=pretrained); runs of O2U-Net train one at a time") in err
    assert "6 runs requested: 6 trained" in err
    runs = Store(store, create=False).runs("done")
    fused = {(m, s): json.loads(env).get("fused") for m, s, env in zip(runs["method"], runs["seed"], runs["env_json"])}
    assert fused == {("mwnet", 0): 2, ("mwnet", 1): 2, ("mwnet", 2): None, ("o2u", 0): None,
                     ("o2u", 1): None, ("o2u", 2): None}
    assert not list((tmp_path / "cache" / "checkpoints").glob("*"))  # the group's checkpoint is gone


def test_a_groups_list_of_runs_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """note_members writes a temp file and renames it: the list beside a checkpoint is the old one
    or the new one, never a torn one, and a failed write leaves no temp file behind."""
    import bench.fused_runs as fused_runs
    from bench.execute import MEMBERS_SUFFIX, remove_checkpoint

    group = FusedGroup((_spec(0), _spec(1)))
    path = checkpoint_path(group, tmp_path)
    note_members(group, path)
    listing = path.with_suffix(MEMBERS_SUFFIX)
    assert listing.read_text().split() == [s.key() for s in group.specs]

    def interrupted(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fused_runs.os, "replace", interrupted)
    note_members(FusedGroup((_spec(2), _spec(3))), path)
    assert listing.read_text().split() == [s.key() for s in group.specs]  # the old list, whole
    assert [f.name for f in path.parent.iterdir()] == [listing.name]
    monkeypatch.undo()
    path.with_name(path.name + ".tmp9-members").write_text("a killed write's leftover")
    remove_checkpoint(path)
    assert not list(path.parent.iterdir())


def test_a_group_checkpoint_left_after_its_runs_were_stored_is_swept(tmp_path):
    """A kill between storing a group's results and removing its checkpoint leaves the file; the
    next grid removes it once every run of the group is done."""
    specs = (_spec(0), _spec(1))
    group = FusedGroup(specs)
    store = Store(tmp_path / "store.sqlite")
    path = checkpoint_path(group, tmp_path)
    note_members(group, path)
    path.write_bytes(b"a checkpoint")
    for spec in specs:
        store.start(spec.key(), spec.to_dict(), "CE")
    store.finish(specs[0].key(), metrics={"acc_last": 50.0}, history=[], env={})
    sweep_group_checkpoints(store, tmp_path)
    assert path.exists()  # a run of the group is not done: a rerun of the same group resumes from it
    store.finish(specs[1].key(), metrics={"acc_last": 50.0}, history=[], env={})
    sweep_group_checkpoints(store, tmp_path)
    assert not list(path.parent.glob("*"))


@pytest.mark.parametrize("method", FUSABLE)
def test_a_fused_groups_steps_replay_as_captured_graphs(method, monkeypatch, request):
    """The fused steps (three plan tensors per run, a loss per run, MW-Net's per-run rows) through
    the CPU stand-in of a CUDA graph (tests/test_capture.py: replays re-run the captured aten calls,
    no Python; host synchronisation refused): the same results as eager, bit for bit."""
    from test_capture import eager_then_replayed
    from test_resume_methods import quick_spec

    if method == "curvenet":  # its probe sees the whole (small) pool every epoch
        request.getfixturevalue("small_pools")
        group = FusedGroup(tuple(_curvenet_spec(s) for s in (0, 1)))
    elif method == "aum":  # so do its scoring runs (a margin for every sample); then each run retrains alone
        request.getfixturevalue("small_pools")
        params = params_items(methods.get("aum").resolve_params("paper", {"aum_epochs": "1"}))
        group = FusedGroup(tuple(_spec(s, "aum", epochs=2, params=params) for s in (0, 1)))
    else:
        plans = Loader.plans  # 6 training steps an epoch: warm-up, capture, replays
        monkeypatch.setattr(Loader, "plans", lambda self: itertools.islice(plans(self), 6) if self.shuffle
                            else plans(self))
        group = FusedGroup(tuple(quick_spec(method, epochs=2).replace(seed=s, data_seed=s) for s in (0, 1)))
    eager, graphed = eager_then_replayed(lambda: execute_fused(group, device=CPU), monkeypatch)
    for mine, theirs in zip(graphed, eager):
        assert mine.status == theirs.status == "done", (mine.error, theirs.error)
        assert mine.metrics == theirs.metrics and mine.history == theirs.history


def _killed_after_the_first(monkeypatch, method: str) -> None:
    """``Store.<method>`` (finish or fail) does its work once, then the process is 'killed'
    (KeyboardInterrupt) right after: a kill between two runs' writes."""
    real, calls = getattr(Store, method), []

    def then_die(self, *args, **kwargs):
        real(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Store, method, then_die)


def test_a_fused_groups_runs_are_stored_together_so_a_kill_while_storing_resumes_the_whole_group(
        tmp_path, monkeypatch, capsys):
    """The runs of a fused group are committed in one transaction: a kill after the first run's
    commit would leave the others running, and the next bench run would fuse them into another
    group (another key) and train them from scratch beside the finished group's checkpoint."""
    from bench.execute import run_grid

    specs = [_spec(0), _spec(1)]
    store, cache = Store(tmp_path / "s.sqlite"), tmp_path / "cache"
    _killed_after_the_first(monkeypatch, "finish")
    with pytest.raises(KeyboardInterrupt):
        run_grid(specs, store, device=torch.device("cpu"), cache_dir=cache, show_progress=False, fuse=2)
    assert [store.status(s.key()) for s in specs] == ["running", "running"]  # neither stored alone
    assert checkpoint_path(FusedGroup(specs), cache).exists()
    monkeypatch.undo()
    capsys.readouterr()
    counts = run_grid(specs, store, device=torch.device("cpu"), cache_dir=cache, show_progress=False, fuse=2)
    assert counts["done"] == 2 and "resuming its fused group from the checkpoint" in capsys.readouterr().err
    assert not list((cache / "checkpoints").glob("*"))


class _CrashingExecutor(executors.Executor):
    """Every item's worker dies (what LocalExecutor reports for a killed worker process)."""

    def start(self, **kwargs):
        self._queue = []

    def submit(self, item):
        self._queue.append(item)

    def wait(self):
        return [(self._queue.pop(0), "crashed", "worker process killed by SIGKILL")]


def test_a_fused_group_given_up_after_its_crashes_is_recorded_failed_whole(tmp_path, monkeypatch):
    """The give-up path records the group's runs in one transaction too: a kill between them would
    leave one run failed and the other running, which the next bench run trains alone, so that
    --retry-failed could no longer resume the group from its kept checkpoint."""
    from bench.execute import run_grid

    specs = [_spec(0), _spec(1)]
    store = Store(tmp_path / "s.sqlite")
    _killed_after_the_first(monkeypatch, "fail")
    with pytest.raises(KeyboardInterrupt):
        run_grid(specs, store, device=torch.device("cpu"), cache_dir=tmp_path / "cache", show_progress=False,
                 fuse=2, executor=_CrashingExecutor(), max_retries=0)
    assert [store.status(s.key()) for s in specs] == ["running", "running"]  # neither recorded alone
    monkeypatch.undo()
    counts = run_grid(specs, store, device=torch.device("cpu"), cache_dir=tmp_path / "cache", show_progress=False,
                      fuse=2, executor=_CrashingExecutor(), max_retries=1)
    assert counts["failed"] == 2 and [store.status(s.key()) for s in specs] == ["failed", "failed"]
    errors = store.runs("failed")["error"].tolist()
    assert errors == ["worker process killed by SIGKILL; gave up after 2 attempts (--max-retries 1)"] * 2


def test_a_fused_groups_checkpoint_that_this_command_would_not_resume_is_said(tmp_path, capsys):
    """Runs killed in a --fuse 2 group and asked for again without --fuse train from scratch: the
    dry run and the run say which --fuse resumes them; with it, the dry run says 'resume'."""
    args = ["run", "--methods", "ce", "--epochs", "1", "--seeds", "0,1", "--store", str(tmp_path / "s.sqlite"),
            "--cache-dir", str(tmp_path / "cache"), "--dry-run"]
    from bench.arguments import build_specs
    from bench.cli import make_parser

    specs = build_specs(make_parser().parse_args(args))
    group = FusedGroup(tuple(specs))
    path = checkpoint_path(group, tmp_path / "cache")
    note_members(group, path)
    path.write_bytes(b"a killed group's checkpoint")
    assert main(args) == 0
    err = capsys.readouterr().err
    assert ("note: the checkpoint of a fused group holds some of these runs, which this command does not fuse so: "
            "they train from scratch; the same command with --fuse 2 resumes them") in err
    assert "2 runs requested: 2 to train, 0 already" in err
    assert main([*args, "--fuse", "2"]) == 0
    out, err = capsys.readouterr()
    assert "note:" not in err and "2 runs requested: 2 to train (2 from a checkpoint)" in err
    assert out.count("resume in a fused group of 2") == 2


def test_runs_fuse_only_when_their_specs_differ_in_the_seeds_alone(changed_fields):
    """A fused group trains every member with the lead's protocol and settings: a run differing in
    anything but seed and data_seed must never join it."""
    from bench.fused_runs import fuse_key

    base = _spec(0, "focal", params=params_items(methods.get("focal").resolve_params("quick")))
    assert fuse_key(base) == fuse_key(base.replace(seed=7)) == fuse_key(base.replace(data_seed=7)) == \
        fuse_key(base.replace(seed=3, data_seed=5))
    keys = {fuse_key(base)}
    gamma_doubled = tuple((k, v * 2 if k == "gamma" else v) for k, v in base.params)
    for name, other in changed_fields(base, gamma_doubled):
        if name in ("seed", "data_seed"):
            continue
        other = other.replace(seed=1, data_seed=1)
        assert fuse_key(other) not in keys, name
        keys.add(fuse_key(other))
    a, b = base.replace(seed=1, data_seed=1), base.replace(seed=2, data_seed=2, lr=0.05)
    assert group_runs([base, a, b], 3) == [FusedGroup((base, a)), b]


def test_a_fused_groups_key_is_the_hash_of_its_members_keys_in_order():
    """Its checkpoint is named after it: a changed hashing orphans the checkpoints of killed groups."""
    import hashlib

    specs = (_spec(0), _spec(1))
    assert FusedGroup(specs).key() == hashlib.sha256(
        f"fused:{specs[0].key()},{specs[1].key()}".encode()).hexdigest()[:16]


class _StubRun:
    """What FusedRun reads of a member Run outside training: its spec, test set, records, reseeding."""

    def __init__(self, seed, data_seed=0, y_test=(0, 1, 2, 3)):
        self.spec = _spec(seed).replace(data_seed=data_seed)
        self.data = type("Data", (), {"x_test": np.zeros((len(y_test), 2)), "y_test": np.array(y_test)})()
        self.records = {}

    def record(self, name, values):
        self.records[name] = values

    def reseeded(self, seed_of):
        import contextlib
        return contextlib.nullcontext()


def _stream(seed, draws):
    torch.manual_seed(seed)
    return [torch.rand(3) for _ in range(draws)]


def test_each_member_draws_its_networks_from_its_own_training_seeds_stream():
    """Same data seed, other training seeds (--data-seed 0 --seeds 3,5): each member's draws are
    those of its training seed's stream, in order, as the run alone draws them."""
    fused = FusedRun([_StubRun(3, data_seed=0), _StubRun(5, data_seed=0)], "rows")
    draws = [[fused._drawn(k, lambda: torch.rand(3)) for k in (0, 1)] for _ in range(2)]
    for k, seed in enumerate((3, 5)):
        assert all(torch.equal(mine, theirs) for mine, theirs in zip([d[k] for d in draws], _stream(seed, 2)))
    with fused.reseeded(lambda spec: spec.seed + 100):  # a stage of its own seed (CurveNet's probe)
        assert torch.equal(fused._drawn(0, lambda: torch.rand(3)), _stream(103, 1)[0])
        assert torch.equal(fused._drawn(1, lambda: torch.rand(3)), _stream(105, 1)[0])
    assert torch.equal(fused._drawn(1, lambda: torch.rand(3)), _stream(5, 3)[2])  # back on its own stream


def test_a_fused_groups_members_need_one_test_set():
    with pytest.raises(BenchError, match="one test set"):
        FusedRun([_StubRun(0), _StubRun(1, y_test=(0, 1, 2, 2))], "rows")
    with pytest.raises(BenchError, match="one test set"):
        FusedRun([_StubRun(0), _StubRun(1, y_test=(0, 1, 2))], "rows")


def test_per_sample_tables_interleave_the_members_and_split_back_into_each_runs_records():
    """Row i K + k of the fused pool is run k's sample i: pooled() builds it, record() and
    run_losses() give each run its own rows (and its own pool positions)."""
    from methods.base import PerRun

    fused = FusedRun([_StubRun(0), _StubRun(1), _StubRun(2)], "rows")
    table = fused.pooled(lambda run: np.arange(4) + 10 * run.spec.seed)
    assert table.tolist() == [0, 10, 20, 1, 11, 21, 2, 12, 22, 3, 13, 23]
    assert fused.pooled(lambda run: torch.arange(2) + 10 * run.spec.seed).tolist() == [0, 10, 20, 1, 11, 21]
    fused.record("weight", table)
    assert [run.records["weight"].tolist() for run in fused.members] == [[0, 1, 2, 3], [10, 11, 12, 13],
                                                                         [20, 21, 22, 23]]
    logits, y = torch.zeros(6, 2), torch.zeros(6, dtype=torch.long)
    seen = []

    def loss(logits_k, y_k, idx_k, epoch):
        seen.append(idx_k.tolist())
        return idx_k.sum().float()

    # batch row n K + k is run k's, its idx the fused pool row i K + k of run k's sample i
    idx = torch.tensor([0 * 3 + 0, 2 * 3 + 1, 1 * 3 + 2, 3 * 3 + 0, 0 * 3 + 1, 3 * 3 + 2])
    losses = fused.run_losses(loss, logits, y, idx, 0)
    assert seen == [[0, 3], [2, 0], [1, 3]]  # each run's own pool positions
    assert losses.tolist() == [3.0, 2.0, 4.0]
    seen.clear()
    fused.run_losses(PerRun([loss, lambda *a: torch.tensor(-1.0), loss]), logits, y, idx, 0)
    assert seen == [[0, 3], [1, 3]]


def test_a_metric_of_k_values_gives_each_member_its_own():
    from bench.fused_runs import _member_value

    losses = torch.tensor([0.5, 1.5, 2.5])
    assert [_member_value(losses, k, 3) for k in range(3)] == [0.5, 1.5, 2.5]
    assert _member_value(torch.tensor(7), 1, 3) == 7 and _member_value(torch.tensor([4.0]), 0, 1) == 4.0
    assert _member_value(np.float32(0.25), 2, 3) == 0.25 and _member_value(3, 0, 3) == 3


def test_each_run_of_a_group_that_fails_gets_its_own_result_and_reason(monkeypatch):
    """Results are stored under result.spec's key: a failed member's result must be its own run's,
    with its own reason, and only a run that did not fail on its own keeps its checkpoint."""
    specs = (_spec(0), _spec(1))

    def fail(self, fused):
        fused.failed[1] = "diverged at train epoch 1: loss is nan"
        raise BenchError("the method refused the data")

    monkeypatch.setattr(methods.get("ce"), "fit", fail)
    results = execute_fused(FusedGroup(specs), device=CPU)
    assert [r.spec for r in results] == list(specs) and [r.status for r in results] == ["failed", "failed"]
    assert [r.error for r in results] == ["the method refused the data", "diverged at train epoch 1: loss is nan"]
    assert [r.keep_checkpoint for r in results] == [False, False]

    def out_of_memory(self, fused):
        fused.failed[1] = "diverged at train epoch 1: loss is nan"
        raise MemoryError("can't allocate memory")

    monkeypatch.setattr(methods.get("ce"), "fit", out_of_memory)
    results = execute_fused(FusedGroup(specs), device=CPU)
    assert [r.spec for r in results] == list(specs)
    assert results[0].error.startswith("out of memory") and results[1].error.startswith("diverged")
    assert [r.keep_checkpoint for r in results] == [True, False]


def test_the_progress_of_a_fused_groups_runs_is_tagged_with_each_runs_key():
    from bench.fused_runs import _member_progress

    rows = []
    spec = _spec(3)
    _member_progress(rows.append, spec)({"epoch": 1})
    assert rows == [{"epoch": 1, "key": spec.key()}] and _member_progress(None, spec) is None


def test_a_group_listing_names_every_member_and_notes_only_checkpoints_holding_pending_runs(tmp_path):
    from bench.fused_runs import group_listings, unused_group_checkpoints

    specs = (_spec(0), _spec(1))
    group = FusedGroup(specs)
    path = checkpoint_path(group, tmp_path)
    note_members(group, path)
    assert list(group_listings(tmp_path)) == [(path, [s.key() for s in specs])]
    # no checkpoint beside the listing: nothing to resume, nothing to say
    assert unused_group_checkpoints(list(specs), tmp_path) is None
    path.write_bytes(b"a killed group's checkpoint")
    assert "--fuse 2 resumes them" in unused_group_checkpoints(list(specs), tmp_path)
    assert unused_group_checkpoints([group], tmp_path) is None  # this command forms that group again
    others = [_spec(2), _spec(3)]
    assert unused_group_checkpoints(others, tmp_path) is None  # it holds none of these runs
    assert "--fuse 2" in unused_group_checkpoints([others[0], specs[1]], tmp_path)


def test_a_fused_groups_optimisers_and_schedule_are_its_runs_own():
    """A group's runs share every setting but their seeds: its SGD is the protocol's at the lr a
    method asks for (O2U-Net's lr_high) or else the runs' lr, and each epoch's lr is the runs' schedule."""
    specs = [_spec(s, epochs=6, warmup_epochs=2, milestones=(4,), lr=0.2) for s in (0, 1)]
    params = methods.get("ce").params_from_spec(specs[0])
    runs = [Run(spec=s, data=load_data(s), device=CPU, params=params) for s in specs]
    fused = FusedRun(runs, "rows")
    weights = [torch.nn.Parameter(torch.zeros(2))]
    assert fused.sgd(weights, lr=0.05).param_groups[0]["lr"] == 0.05
    group = fused.sgd(weights).param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.2, specs[0].momentum, specs[0].weight_decay)
    schedule = [fused.lr_at(e) for e in range(6)]
    assert schedule == pytest.approx([0.1, 0.2, 0.2, 0.2, 0.02, 0.02])
    assert all(schedule == [run.lr_at(e) for e in range(6)] for run in runs)
