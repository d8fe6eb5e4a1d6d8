"""Table 8 timing (bench/timing.py): the steps are the training code's, the phase hooks fire once
per phase and iteration, the JSON and table layouts."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import timing

ROOT = Path(__file__).resolve().parents[1]


def test_steps_use_the_methods_meta_step_configurations():
    from methods.curvenet import CurveNet
    from methods.meta import MetaStep
    from methods.mwnet import WeightNet

    step, clock = timing.build_step("ce", batch=8)
    clock.enabled = True
    step()
    assert list(clock.iterations[0]) == ["batch", "real_forward", "real_backward"] and clock.meta_ms() == [0.0]
    step, _ = timing.build_step("mwnet", batch=8)
    ms = step.meta_step
    assert isinstance(ms, MetaStep) and isinstance(ms.weight_net, WeightNet)
    assert (ms.lookahead, ms.skip_layers, ms.normalize) == ("sgd", 0, False)
    for k in range(4):
        step, _ = timing.build_step(f"curvenet_sl{k}", batch=8)
        ms = step.meta_step
        assert isinstance(ms.weight_net, CurveNet) and (ms.lookahead, ms.skip_layers) == ("full", k)
    with pytest.raises(ValueError):
        timing.build_step("curvenet_sl4")


def test_meta_time_is_measured_once_per_iteration_and_inside_the_iteration():
    r = timing.measure("curvenet_sl2", model_name="small_cnn", batch=8, device="cpu", repeats=3, warmup=1)
    assert len(r["meta_ms_all"]) == 3 and len(r["ms_per_iter_all"]) == 3
    assert 0 < r["meta_ms"] < r["ms_per_iter"]
    assert 0 < sum(r["phase_ms"].values()) <= sum(r["ms_per_iter_all"])
    ce = timing.measure("ce", model_name="small_cnn", batch=8, device="cpu", repeats=2, warmup=0)
    assert ce["meta_ms"] == 0.0 and ce["ms_per_iter"] > 0


def test_phases_are_marked_in_order_and_bracket_the_updates():
    """Every phase of methods.meta.PHASES is marked once per iteration, in order, after the batch;
    the weighting net changes inside "weight_update", the classifier only inside "real_backward";
    the meta time is the sum of the meta phases."""
    import torch

    from methods.meta import META_TIME_PHASES, PHASES

    step, clock = timing.build_step("mwnet", batch=8)
    ms = step.meta_step
    marks = []

    def on_phase(phase):
        marks.append((phase, ms.weight_net.net[0].weight.detach().clone(), ms.model.fc.weight.detach().clone()))
        clock(phase)

    ms.on_phase = on_phase
    clock.enabled = True
    before_w, before_fc = ms.weight_net.net[0].weight.detach().clone(), ms.model.fc.weight.detach().clone()
    step()
    assert [m[0] for m in marks] == list(PHASES)
    assert list(clock.iterations[0]) == list(PHASES) and PHASES[0] == "batch"
    changed_w = [phase for phase, w, _ in marks if not torch.equal(w, before_w)]
    changed_fc = [phase for phase, _, fc in marks if not torch.equal(fc, before_fc)]
    assert changed_w[0] == "weight_update" and changed_fc == ["real_backward"]
    assert clock.meta_ms() == [sum(clock.iterations[0][p] for p in META_TIME_PHASES)]


def test_cli_json_and_table():
    cmd = [sys.executable, "-m", "bench", "timing", "--device", "cpu", "--model", "small_cnn", "--batch-size", "8",
           "--repeats", "1", "--warmup", "0"]
    out = subprocess.run(cmd + ["--json"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert list(data) == list(timing.STEPS)
    for key, r in data.items():
        assert r["ms_per_iter"] > 0 and r["meta_ms"] >= 0
        assert (r["meta_ms"] == 0) == (key == "ce")
    assert data["curvenet_sl0"]["ratio_to_sl0"] == 1.0 and data["curvenet_sl3"]["paper_meta_ms"] == 41.98
    text = timing.render(data)
    for v in ("239.94", "222.45", "65.44", "41.98", "CurveNet SL=3", "× CE", "look-ahead bwd", "in CE iterations"):
        assert v in text
    bad = subprocess.run(cmd + ["--steps", "ce,foo"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "unknown step" in bad.stderr


def test_packing_reports_alone_and_packed_times_and_their_ratio():
    r = timing.packing("ce", 2, model_name="small_cnn", batch=8, device="cpu", iters=3, warmup=1)
    assert r["jobs"] == 2 and r["alone_ms_per_iter"] > 0 and r["packed_ms_per_iter"] > 0
    assert r["ratio"] == r["packed_ms_per_iter"] / r["alone_ms_per_iter"]


def test_bad_pack_is_a_one_line_error():
    result = subprocess.run([sys.executable, "-m", "bench", "timing", "--pack", "1", "--device", "cpu"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "bench: error: --pack needs at least 2 runs, got 1"]


def test_a_failing_packed_process_is_an_error_not_a_hang():
    """A packed process that raises stops the measurement at once (it breaks the barrier the others
    wait at); one that dies without a word (killed, out of memory) too."""
    import multiprocessing
    import os

    from bench.errors import BenchError

    with pytest.raises(BenchError, match="a packed nope process failed: ValueError: unknown step 'nope'"):
        timing.packing("nope", 2, model_name="small_cnn", batch=8, device="cpu", iters=1, warmup=0)
    ctx = multiprocessing.get_context("spawn")
    dying = ctx.Process(target=os._exit, args=(3,))
    dying.start()
    with pytest.raises(BenchError, match=r"a packed ce process died \(exit code 3\)"):
        timing._packed_results("ce", [dying], ctx.Queue())
    assert not dying.is_alive()
