"""Every registered method survives a kill: resumed from its checkpoint, it ends exactly as an
uninterrupted run (CPU, bit for bit). Short schedules keep this affordable."""

import numpy as np
import pytest
import torch

import methods
from bench import execute as ex
from bench.spec import PRESETS, RunSpec, scale_schedule
from methods.base import Run, params_items

# the two-stage methods' own schedules, shortened the same way (their stages still all run)
SHORT = {"curvenet": {"probe_epochs": "2", "half_period": "1", "periods": "1", "cycle_batch_size": "64"},
         "o2u": {"cycle_length": "2", "cycles": "1", "cycle_batch_size": "64"}}


def quick_spec(name: str, epochs: int = 3) -> RunSpec:
    cls = methods.get(name)
    schedule = scale_schedule(PRESETS["quick"], epochs)
    return RunSpec(method=name, imbalance=100.0, noise_type="flip2", noise_rate=0.4,
                   params=params_items(cls.resolve_params("quick", SHORT.get(name))), **schedule)


@pytest.mark.usefixtures("small_pools")  # every 8th sample: the same stages and epochs, shorter
@pytest.mark.parametrize("name", methods.names())
def test_a_killed_run_resumes_to_the_uninterrupted_result(name, tmp_path, monkeypatch):
    spec = quick_spec(name)
    reference = ex.execute(spec, device=torch.device("cpu"), cache_dir=None)
    assert reference.status == "done", reference.error
    logs = len(reference.history)
    original = Run.log
    for kill_at in sorted({2, max(2, logs // 2), max(2, logs - 1)}):
        calls = {"n": 0}

        def log_then_die(self, *args, _kill_at=kill_at, calls=calls, **kwargs):
            original(self, *args, **kwargs)
            calls["n"] += 1
            if calls["n"] == _kill_at:
                raise KeyboardInterrupt

        cache = tmp_path / f"cache{kill_at}"
        monkeypatch.setattr(Run, "log", log_then_die)
        with pytest.raises(KeyboardInterrupt):
            ex.execute(spec, device=torch.device("cpu"), cache_dir=cache, checkpoint_every_s=0)
        assert ex.checkpoint_path(spec, cache).exists(), (name, kill_at)
        notes, relogged = [], {"n": 0}

        def count_logs(self, *args, relogged=relogged, **kwargs):
            original(self, *args, **kwargs)
            relogged["n"] += 1

        monkeypatch.setattr(Run, "log", count_logs)
        resumed = ex.execute(spec, device=torch.device("cpu"), cache_dir=cache, checkpoint_every_s=0,
                             progress=lambda row, notes=notes: notes.append(row["note"]) if "note" in row else None)
        monkeypatch.setattr(Run, "log", original)
        # resumed from the checkpoint, not trained again from scratch: the kill came in the epoch of
        # the kill_at-th log, so epochs before it are restored, not trained (logged) again
        assert len(notes) == 1 and notes[0].startswith("resuming from its checkpoint ("), notes
        assert relogged["n"] < logs, (name, kill_at, relogged["n"], logs)
        assert resumed.status == "done", resumed.error
        assert resumed.metrics == reference.metrics, (name, kill_at)
        for record, values in reference.values.items():  # NaN == NaN here
            np.testing.assert_array_equal(resumed.values[record], values, err_msg=f"{name} {record}")
