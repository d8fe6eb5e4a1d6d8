"""`bench run --fuse K` (bench/fused_runs.py): seeds of one cell trained as one fused network are
the runs trained alone, each with its own data, weights, history and result."""

import itertools
import json
import math

import numpy as np
import pytest
import torch

import methods
from bench.cli import main
from bench.data.loader import Loader
from bench.execute import checkpoint_path, execute, load_data
from bench.fused import run_state
from bench.fused_runs import FusedGroup, FusedRun, execute_fused, group_runs, note_members, sweep_group_checkpoints
from bench.spec import RunSpec
from bench.store import Store
from methods.base import Run

CPU = torch.device("cpu")


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
    cb = [_spec(s, "cb") for s in range(2)]
    focal = _spec(0, "focal")
    queue = group_runs([ce[0], cb[0], ce[1], other_cell, ce[2], ce[3], cb[1], ce[4], focal], 2)
    assert queue == [FusedGroup((ce[0], ce[1])), cb[0], other_cell, FusedGroup((ce[2], ce[3])), cb[1],
                     ce[4], focal]  # a group of one is the run; cb (each run's class counts) is never fused
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


def test_the_fusable_methods_are_the_documented_ones(capsys):  # README and `bench run --help` name them
    assert FUSABLE == ["ce", "focal", "mwnet"]
    assert main(["list"]) == 0
    assert "fused network by `bench run --fuse K`: ce, focal, mwnet\n" in capsys.readouterr().out


# the rows layout is the CPU's; the runs layout (CUDA's, in channels_last there) is checked here
# on the method with the most parts (backbone, weighting net, meta cycle, records)
@pytest.mark.parametrize("method,layout", [(m, "rows") for m in FUSABLE] + [("mwnet", "runs")])
def test_each_run_of_a_fused_group_trains_as_it_does_alone(method, layout, float64, monkeypatch):
    # in float64 (models, and batches from the loader) rounding is out of the way: in float32
    # it grows chaotically over an epoch's steps to about 1e-4 of the weights (ill-conditioned
    # BatchNorm bias gradients differ by 1e-4 at the first step), here it stays near 1e-16
    normalise, plans = Loader.normalise, Loader.plans
    monkeypatch.setattr(Loader, "normalise", lambda self, xb: normalise(self, xb).double())
    monkeypatch.setattr(Loader, "plans", lambda self: itertools.islice(plans(self), 10) if self.shuffle
                        else plans(self))  # 10 training steps an epoch (evaluation passes stay whole)
    specs = [_spec(s, method) for s in (0, 1)]
    alone = [_alone(spec) for spec in specs]
    model, fused_run = _fit_fused(specs, layout)
    for k, (state, history, records) in enumerate(alone):
        assert _gap(run_state(model, k), state) < 1e-9, k
        assert _gap(run_state(model, k), alone[1 - k][0]) > 0.1  # the runs differ: the check can tell them apart
        mine = fused_run.members[k]
        assert [(h["stage"], h["epoch"]) for h in mine.history] == [(h["stage"], h["epoch"]) for h in history]
        for row, theirs in zip(mine.history, history):  # loss (MW-Net: meta loss, mean weight too), accuracy
            assert row.keys() == theirs.keys()
            assert all(row[m] == pytest.approx(theirs[m], rel=1e-9) for m in row if isinstance(row[m], float))
        assert mine.records.keys() == records.keys()  # MW-Net's final weights: each run's own pool
        for name, values in records.items():
            assert np.allclose(mine.records[name], values, rtol=1e-9, atol=1e-12)


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


def test_a_group_whose_runs_all_diverge_stops_with_each_reason(monkeypatch):
    specs = [_spec(s, epochs=3) for s in (0, 1)]
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda *a, **k: torch.tensor(math.inf,
                                                                                           requires_grad=True))
    results = execute_fused(FusedGroup(tuple(specs)), device=CPU)
    assert [r.status for r in results] == ["failed", "failed"]
    assert all(r.error == "diverged at train epoch 1: loss is inf" for r in results)


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


def test_a_killed_group_resumes_from_its_checkpoint_bit_for_bit(tmp_path):
    group = FusedGroup(tuple(_spec(s, epochs=3) for s in (0, 1)))
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


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_bench_run_fuse_stores_every_run_of_every_group(jobs, tmp_path, capsys):
    store = tmp_path / "store.sqlite"
    code = main(["run", "--methods", "mwnet,cb", "--seeds", "0,1,2", "--epochs", "1", "--quiet", "--fuse", "2",
                 "--jobs", jobs, "--store", str(store), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "--fuse applies to ce, focal, mwnet; runs of cb train one at a time" in err
    assert "6 runs requested: 6 trained" in err
    runs = Store(store, create=False).runs("done")
    fused = {(m, s): json.loads(env).get("fused") for m, s, env in zip(runs["method"], runs["seed"], runs["env_json"])}
    assert fused == {("mwnet", 0): 2, ("mwnet", 1): 2, ("mwnet", 2): None, ("cb", 0): None, ("cb", 1): None,
                     ("cb", 2): None}
    assert not list((tmp_path / "cache" / "checkpoints").glob("*"))  # the group's checkpoint is gone


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
def test_a_fused_groups_steps_replay_as_captured_graphs(method, monkeypatch):
    """The fused steps (three plan tensors per run, a loss per run, MW-Net's per-run rows) through
    the CPU stand-in of a CUDA graph (tests/test_capture.py: replays re-run the captured aten calls,
    no Python; host synchronisation refused): the same results as eager, bit for bit."""
    from test_capture import eager_then_replayed
    from test_resume_methods import quick_spec

    plans = Loader.plans  # 6 training steps an epoch: warm-up, capture, replays
    monkeypatch.setattr(Loader, "plans", lambda self: itertools.islice(plans(self), 6) if self.shuffle else plans(self))
    group = FusedGroup(tuple(quick_spec(method, epochs=2).replace(seed=s, data_seed=s) for s in (0, 1)))
    eager, graphed = eager_then_replayed(lambda: execute_fused(group, device=CPU), monkeypatch)
    for mine, theirs in zip(graphed, eager):
        assert mine.status == theirs.status == "done", (mine.error, theirs.error)
        assert mine.metrics == theirs.metrics and mine.history == theirs.history
