"""Per-epoch checkpoints: a run resumed after a kill ends exactly as an uninterrupted one."""

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.execute import load_data
from bench.spec import RunSpec
from methods.base import Run


def _spec():
    return RunSpec(method="ce", epochs=4, warmup_epochs=1, milestones=(2, 3))


class Killed(Exception):
    pass


def _train(run, kill_after=None, stages=("a", "b"), trained=None):
    """A two-stage loop touching every kind of state: model, optimiser, meta cycle, a tensor.
    ``trained`` (a list) receives the (stage, epoch) of each epoch this call trains."""
    torch.manual_seed(0)
    model = torch.nn.Linear(784, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    meta = run.loader("meta", batch_size=7).cycle()
    counter = torch.zeros(len(run.data.train_y))
    done = 0
    for stage in stages:
        if stage == "b":  # between stages: consume the global RNG, as a fresh model init would
            torch.nn.init.normal_(model.weight, std=0.01)
        for epoch in run.epochs(3, stage=stage, state={"model": model, "opt": opt, "meta": meta, "c": counter}):
            if kill_after is not None and done == kill_after:  # killed during this epoch
                raise Killed
            for i, (x, y, idx) in enumerate(run.loader("train", batch_size=256)):
                if i >= 3:
                    break
                xm, ym, _ = next(meta)
                loss = torch.nn.functional.cross_entropy(model(x.flatten(1)), y) + 0.01 * model(xm.flatten(1)).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                counter[idx] += torch.rand(len(idx))
            run.log(epoch, stage=stage, loss=float(loss.detach()))
            done += 1
            if trained is not None:
                trained.append((stage, epoch))
    return model, counter


def test_resume_from_any_epoch_is_bit_for_bit(tmp_path):
    data = load_data(_spec())
    reference_model, reference_counter = _train(Run(spec=_spec(), data=data, device=torch.device("cpu")))
    for kill_after in range(1, 6):  # after 1..5 finished epochs, across the stage boundary
        path = tmp_path / f"ck{kill_after}.pt"
        run = Run(spec=_spec(), data=data, device=torch.device("cpu"), checkpoint_path=path, checkpoint_every_s=0)
        try:
            _train(run, kill_after=kill_after)
        except Killed:
            pass
        assert path.exists()
        resumed = Run(spec=_spec(), data=data, device=torch.device("cpu"), checkpoint_path=path,
                      checkpoint_every_s=0)
        assert resumed.checkpoint_found
        trained = []
        model, counter = _train(resumed, trained=trained)
        # the restore did its work: only the epochs the kill lost are trained again (a restore
        # that did nothing would retrain all six from the same seeds and end the same)
        everything = [(s, e) for s in "ab" for e in range(3)]
        assert trained == everything[kill_after:], kill_after
        assert resumed.resumed_from == everything[kill_after - 1]
        assert torch.equal(model.weight, reference_model.weight), kill_after
        assert torch.equal(counter, reference_counter)
        assert [(h["stage"], h["epoch"]) for h in resumed.history] == [(s, e) for s in "ab" for e in range(3)]


def test_the_end_of_a_stage_is_checkpointed_however_long_between_checkpoints(tmp_path):
    data = load_data(_spec())
    reference_model, reference_counter = _train(Run(spec=_spec(), data=data, device=torch.device("cpu")))
    path = tmp_path / "ck.pt"
    run = Run(spec=_spec(), data=data, device=torch.device("cpu"), checkpoint_path=path, checkpoint_every_s=1e9)
    try:
        _train(run, kill_after=4)  # killed in stage b's second epoch; no time-based checkpoint came due
    except Killed:
        pass
    resumed = Run(spec=_spec(), data=data, device=torch.device("cpu"), checkpoint_path=path, checkpoint_every_s=1e9)
    model, counter = _train(resumed)
    assert resumed.resumed_from == ("a", 2)  # stage a, saved as it ended; stage b trained again
    assert torch.equal(model.weight, reference_model.weight) and torch.equal(counter, reference_counter)


def test_a_stage_name_used_twice_is_an_error():
    import pytest
    run = Run(spec=_spec(), data=load_data(_spec()), device=torch.device("cpu"))
    list(run.epochs(1, stage="x"))
    with pytest.raises(ValueError, match="twice"):
        list(run.epochs(1, stage="x"))


def test_execute_resumes_a_killed_ce_run_to_the_same_result(tmp_path, monkeypatch):
    from bench import execute as ex

    spec = _spec()
    reference = ex.execute(spec, device=torch.device("cpu"), cache_dir=None)
    calls = {"n": 0}
    original = Run.log

    def log_then_die(self, epoch, *args, **kwargs):
        original(self, epoch, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Run, "log", log_then_die)
    with pytest.raises(KeyboardInterrupt):  # killed during its second epoch, after the first was saved
        ex.execute(spec, device=torch.device("cpu"), cache_dir=tmp_path, checkpoint_every_s=0)
    monkeypatch.setattr(Run, "log", original)
    assert ex.checkpoint_path(spec, tmp_path).exists()
    notes, epochs = [], []
    resumed = ex.execute(spec, device=torch.device("cpu"), cache_dir=tmp_path, checkpoint_every_s=0,
                         progress=lambda row: (notes if "note" in row else epochs).append(row))
    assert notes == [{"note": "resuming from its checkpoint (train, 1 epoch done)"}]
    assert [row["epoch"] for row in epochs] == [1, 2, 3]  # the first epoch was not trained again
    assert resumed.metrics == reference.metrics
    assert np.allclose([h["loss"] for h in resumed.history], [h["loss"] for h in reference.history], rtol=0, atol=0)


def test_a_checkpoint_that_cannot_be_written_is_warned_once_and_training_goes_on(tmp_path, monkeypatch, capsys):
    """A full disk (torch reports a short write as a RuntimeError) or a cache directory that cannot
    be made costs the checkpoints, not the run: one line, then the run trains to its end as it
    would have without checkpoints."""
    data = load_data(_spec())
    reference_model, _ = _train(Run(spec=_spec(), data=data, device=torch.device("cpu")))
    calls = []

    def full_disk(obj, f, *a, **k):
        calls.append(f)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 273664 vs 273552")

    monkeypatch.setattr(torch, "save", full_disk)
    path = tmp_path / "ck.pt"
    run = Run(spec=_spec(), data=data, device=torch.device("cpu"), checkpoint_path=path, checkpoint_every_s=0)
    model, _ = _train(run)
    assert torch.equal(model.weight, reference_model.weight) and len(run.history) == 6
    assert len(calls) == 1 and not path.exists() and not list(tmp_path.glob("ck.pt.tmp*"))
    err = capsys.readouterr().err
    assert err.count("cannot write the checkpoint") == 1 and "unexpected pos" in err and "MiB free there" in err
    monkeypatch.undo()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    run = Run(spec=_spec(), data=data, device=torch.device("cpu"), checkpoint_path=blocker / "ck.pt",
              checkpoint_every_s=0)
    model, _ = _train(run)  # the checkpoint's directory cannot be made under a file
    assert torch.equal(model.weight, reference_model.weight)
    assert capsys.readouterr().err.count("cannot write the checkpoint") == 1


def _killed_after_two_epochs(tmp_path):
    """The data of ``_spec()`` and the checkpoint its run left, killed after 2 epochs."""
    data = load_data(_spec())
    path = tmp_path / "ck.pt"
    run = Run(spec=_spec(), data=data, device=torch.device("cpu"), checkpoint_path=path, checkpoint_every_s=0)
    try:
        _train(run, kill_after=2)
    except Killed:
        pass
    return data, path


def test_a_checkpoint_of_another_run_or_a_corrupt_one_is_ignored(tmp_path, capsys):
    data, path = _killed_after_two_epochs(tmp_path)
    assert Run(spec=_spec(), data=data, device=torch.device("cpu"), checkpoint_path=path).checkpoint_found
    other = RunSpec(method="ce", epochs=5, warmup_epochs=1, milestones=(2, 3))  # another key, same file
    stranger = Run(spec=other, data=data, device=torch.device("cpu"), checkpoint_path=path)
    assert not stranger.checkpoint_found
    _train(stranger)  # trains every epoch itself instead of restoring the other run's state
    assert stranger.resumed_from is None
    assert [(h["stage"], h["epoch"]) for h in stranger.history] == [(s, e) for s in "ab" for e in range(3)]
    assert "belongs to another run; the run starts over" in capsys.readouterr().err
    path.write_bytes(b"not a checkpoint")
    assert not Run(spec=_spec(), data=data, device=torch.device("cpu"), checkpoint_path=path).checkpoint_found
    assert "cannot be read (" in capsys.readouterr().err  # said, not silent


def test_training_time_counts_every_attempt_up_to_its_checkpoint(tmp_path, monkeypatch):
    """Run.trained_s (the store's env["train_s"], `bench table --metric minutes`): an attempt's
    seconds since it was set up, plus those of the killed attempt up to the checkpoint resumed
    from; the time the kill lost after that checkpoint is not counted (it is trained again)."""
    import methods.base as base

    clock = {"now": 1000.0}
    monkeypatch.setattr(base.time, "monotonic", lambda: clock["now"])
    data = load_data(_spec())
    path = tmp_path / "ck.pt"
    run = Run(spec=_spec(), data=data, device=torch.device("cpu"), checkpoint_path=path, checkpoint_every_s=0)
    epochs = run.epochs(3, stage="a")
    for _ in range(2):  # two epochs of 10 s, each checkpointed as it ends
        next(epochs)
        clock["now"] += 10.0
    next(epochs)  # the second epoch's checkpoint: 20 s
    clock["now"] += 7.0  # killed 7 s into the third epoch
    resumed = Run(spec=_spec(), data=data, device=torch.device("cpu"), checkpoint_path=path, checkpoint_every_s=0)
    assert resumed.trained_s() == 20.0
    list(resumed.epochs(3, stage="a"))  # the third epoch again, 5 s
    clock["now"] += 5.0
    assert resumed.trained_s() == 25.0
    fresh = Run(spec=_spec(), data=data, device=torch.device("cpu"))
    clock["now"] += 3.0
    assert fresh.trained_s() == 3.0


def test_a_run_resumed_with_another_thread_count_says_its_numbers_differ_by_rounding(tmp_path):
    """On the CPU a run is bit-for-bit the same only with the same thread count: resuming under
    another one (a run killed under --jobs 2, resumed alone) is said with the resume note."""
    data, path = _killed_after_two_epochs(tmp_path)
    same = Run(spec=_spec(), data=data, device=torch.device("cpu"), checkpoint_path=path, checkpoint_every_s=0)
    assert same.checkpoint_position() == "a, 2 epochs done"
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(before + 1)
        other = Run(spec=_spec(), data=data, device=torch.device("cpu"), checkpoint_path=path, checkpoint_every_s=0)
        assert other.checkpoint_position() == (
            f"a, 2 epochs done; it trained with {before} torch thread{'s' * (before != 1)}, now {before + 1}: "
            "its numbers differ by float rounding from a run never stopped")
    finally:
        torch.set_num_threads(before)


def test_checkpoints_are_written_at_most_once_per_interval_and_at_each_stages_end(tmp_path, monkeypatch):
    """``checkpoint_every_s``: an epoch's checkpoint is written only once that long has passed since
    the last one written (the clock restarts at each write), and always when a stage ends."""
    import methods.base as base

    clock = {"now": 0.0}
    writes = []
    real_save = torch.save
    monkeypatch.setattr(base.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: (writes.append(obj["stages"]["a"]["epoch"]),
                                                                real_save(obj, f, *a, **k)))
    run = Run(spec=_spec(), data=load_data(_spec()), device=torch.device("cpu"), checkpoint_path=tmp_path / "ck.pt",
              checkpoint_every_s=10.0)
    for _ in run.epochs(6, stage="a"):
        clock["now"] += 6.0  # epochs end at 6, 12, 18, 24, 30, 36 s
    assert writes == [1, 3, 5]  # 12 s (>= 10 since 0), 24 s (>= 10 since 12), the stage's end


def test_a_half_written_checkpoint_is_removed_when_the_write_fails(tmp_path, monkeypatch, capsys):
    """A write that fails midway (disk full) leaves no temp file behind, and no checkpoint."""
    def half_write(obj, f, *a, **k):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_write)
    path = tmp_path / "ck.pt"
    run = Run(spec=_spec(), data=load_data(_spec()), device=torch.device("cpu"), checkpoint_path=path,
              checkpoint_every_s=0)
    list(run.epochs(2, stage="a"))
    assert not path.exists() and not list(tmp_path.glob("ck.pt.tmp*"))
    assert capsys.readouterr().err.count("No space left on device") == 1


def test_a_stages_saved_state_is_a_copy_that_later_training_does_not_change():
    """What a finished epoch saved (tensors, modules, optimisers) is a deep copy: training on after
    it leaves the saved state as it was (a later checkpoint writes the earlier stage's true end)."""
    from methods.base import _snapshot

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    counter = torch.zeros(4)
    saved = _snapshot({"model": model, "opt": opt, "c": counter})
    weight = model.weight.detach().clone()
    momentum = opt.state[model.weight]["momentum_buffer"].clone()
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    counter.add_(1)
    assert torch.equal(saved["model"]["weight"], weight) and torch.equal(saved["c"], torch.zeros(4))
    assert torch.equal(saved["opt"]["state"][0]["momentum_buffer"], momentum)


def test_a_checkpoint_is_on_disk_before_it_replaces_the_last(tmp_path, monkeypatch):
    """fsync, then rename: after a power cut the checkpoint is the last one or the new one, whole."""
    import os

    import methods.base as base

    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(base.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(base.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    run = Run(spec=_spec(), data=load_data(_spec()), device=torch.device("cpu"), checkpoint_path=tmp_path / "ck.pt",
              checkpoint_every_s=0)
    list(run.epochs(2, stage="a"))
    assert events and events == ["fsync", "replace"] * (len(events) // 2)
    assert (tmp_path / "ck.pt").exists()
