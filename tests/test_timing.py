"""Table 8 timing (bench/timing.py): the steps are the training code's, the phase hooks fire once
per phase and iteration, the JSON and table layouts."""

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench import packing, timing
from bench.errors import BenchError

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


@pytest.mark.parametrize("name", ["mwnet", "curvenet_sl2"])
def test_second_order_autograd_times_the_same_update_by_a_second_order_backward(name):
    """``--second-order autograd`` (the papers' codes' computation, Table 8) builds the meta step
    with a second-order backward; from the same seed it gives the weighting net the same gradient
    as the default JVP, to float32 rounding."""
    import torch

    grads = {}
    for second_order in ("jvp", "autograd"):
        step, _ = timing.build_step(name, batch=8, second_order=second_order)
        assert step.meta_step.second_order == second_order
        step()
        grads[second_order] = [p.grad.detach().clone() for p in step.meta_step.weight_net.parameters()]
    assert any(bool(g.abs().max() > 0) for g in grads["jvp"])
    for a, b in zip(grads["jvp"], grads["autograd"]):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6 * float(a.abs().max()))


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
    bad = subprocess.run(cmd + ["--steps", "ce,,mwnet"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "--steps 'ce,,mwnet' has an empty item" in bad.stderr
    bad = subprocess.run(cmd + ["--pack-mode", "streams"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "--pack-mode streams is for --pack N" in bad.stderr


def test_deterministic_timing_says_so_and_leaves_torch_as_it_was():
    """``--deterministic`` times the steps under deterministic kernels (bench run --deterministic's
    cost), says so in the table's head, and is refused with --pack (the workers would not be)."""
    import argparse

    import torch

    parser = argparse.ArgumentParser()
    timing.add_arguments(parser)
    argv = ["--device", "cpu", "--model", "small_cnn", "--batch-size", "8", "--repeats", "1", "--warmup", "0",
            "--steps", "ce", "--deterministic"]
    seen = []
    real = timing.run_all
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(timing, "run_all", lambda *a, **kw: seen.append(torch.are_deterministic_algorithms_enabled())
                   or real(*a, **kw))
        assert timing.main(parser.parse_args(argv)) == 0
    assert seen == [True] and not torch.are_deterministic_algorithms_enabled()
    data = timing.run_all(["ce"], model_name="small_cnn", batch=8, device="cpu", repeats=1, warmup=0)
    assert data["ce"]["deterministic"] is False
    assert "deterministic kernels" in timing.render({"ce": {**data["ce"], "deterministic": True}})
    assert "deterministic kernels" not in timing.render(data)
    with pytest.raises(BenchError, match="does not apply to --pack"):
        timing.main(parser.parse_args([*argv, "--pack", "2"]))


def test_pack_without_a_mode_measures_and_renders_the_default_processes(monkeypatch, capsys):
    """``--pack N`` alone is ``--pack-mode processes`` (its help): measured so, and the table's
    footnote says so (it failed with KeyError: None after the whole measurement)."""
    import argparse

    parser = argparse.ArgumentParser()
    timing.add_arguments(parser)
    modes = []
    row = {"alone_ms_per_iter": 10.0, "packed_ms_per_iter": 15.0, "ratio": 1.5}
    monkeypatch.setattr(packing, "measure", lambda mode, name, jobs, **kw: modes.append(mode) or row)
    argv = ["--device", "cpu", "--model", "small_cnn", "--batch-size", "8", "--repeats", "1", "--steps", "ce"]
    assert timing.main(parser.parse_args([*argv, "--pack", "2"])) == 0
    assert modes == ["processes"]
    out = capsys.readouterr().out
    assert "| ce     | 10.00" in out and "packed = 2 processes at once on the same device" in out


def test_packing_reports_alone_and_packed_times_and_their_ratio():
    """Packed processes: the slowest one's ms per iteration (the N runs' epoch ends with it), each
    process's beside it, and how their steps ran."""
    r = packing.packing("ce", 2, model_name="small_cnn", batch=8, device="cpu", iters=3, warmup=1)
    assert r["jobs"] == 2 and r["alone_ms_per_iter"] > 0 and r["packed_ms_per_iter"] > 0
    assert r["ratio"] == r["packed_ms_per_iter"] / r["alone_ms_per_iter"]
    assert len(r["packed_ms_per_iter_each"]) == 2 and r["modes"] == ["eager"]
    assert r["packed_ms_per_iter"] == pytest.approx(max(r["packed_ms_per_iter_each"]), abs=1e-3)


def test_the_packing_table_says_how_the_steps_ran():
    """A fused step whose capture fell back to eager beside a captured step alone would compare
    unlike steps: the table shows it."""
    import torch

    args = SimpleNamespace(pack=4, model="resnet32", batch_size=128, precision="fp32", pack_mode="fused",
                           cudnn_benchmark=False)
    rows = {"ce": {"alone_ms_per_iter": 3.0, "packed_ms_per_iter": 9.0, "ratio": 3.0, "modes": ["captured", "eager"]},
            "mwnet": {"alone_ms_per_iter": 15.0, "packed_ms_per_iter": 30.0, "ratio": 2.0, "modes": ["captured"]}}
    text = packing.render(rows, args, torch.device("cpu"), channels_last=False)
    assert "| steps ran" in text and "| captured, eager |" in text and "| captured        |" in text
    assert "a capture failed" in text


def test_lockstep_packing_steps_every_copy_once_per_iteration_from_its_own_seed(monkeypatch):
    """``--pack-mode streams``: the copies are the seeds of one cell (seed, seed + 1, ...), built as
    training builds them; an iteration alone steps the first copy, a packed one every copy once."""
    built, calls = [], []

    def fake_build_step(name, *, seed, **kw):
        def step():
            calls.append(seed)
        step.graphed = type("G", (), {"mode": "eager", "warmup": 2, "enabled": False})()
        built.append((name, seed, kw["graph"]))
        return step, None
    monkeypatch.setattr(packing, "build_step", fake_build_step)
    r = packing.packing_streams("mwnet", 3, model_name="small_cnn", batch=8, device="cpu", iters=4, warmup=1, seed=5)
    assert built == [("mwnet", 5, False), ("mwnet", 6, False), ("mwnet", 7, False)]  # no capture on CPU
    # warm-up: 1 call each; alone: 1 untimed + 4 timed of copy 0; packed: 1 + 4 rounds of all three
    assert calls == [5, 6, 7] + [5] * 5 + [5, 6, 7] * 5
    assert r["jobs"] == 3 and r["mode"] == "streams" and r["ratio"] == r["packed_ms_per_iter"] / r["alone_ms_per_iter"]
    monkeypatch.undo()  # the real steps, end to end
    r = packing.packing_streams("ce", 2, model_name="small_cnn", batch=8, device="cpu", iters=2, warmup=1)
    assert r["alone_ms_per_iter"] > 0 and r["packed_ms_per_iter"] > 0 and r["modes"] == ["eager"]


@pytest.mark.parametrize("layout", ["rows", "runs"])
@pytest.mark.parametrize("name", ["ce", "mwnet", "curvenet_sl3"])
def test_a_fused_step_is_the_seeds_steps_alone(name, layout):
    """``--pack-mode fused``: build_step(runs=3) is the runs of seeds 5, 6, 7 as build_step builds
    each alone (classifier, weighting net, batches, curves), fused; two fused iterations leave
    every run where two iterations alone leave it, float32 rounding apart. That rounding differs
    between a grouped and a plain convolution and can tip a ReLU sitting at its kink, whose
    gradient then moves: on an AVX-512 CPU two MW-Net iterations left 108 of layer3.0.weight's
    elements off by up to 5.3e-5 (and no element past 1e-5 after one). Hence atol 1e-4; a fusion
    bug (another run's rows, a wrong B) moves parameters by 1e-2 and more. The exact check, in
    float64, is tests/test_fused.py's."""
    import torch

    from bench.fused import run_state

    fused_step, _ = timing.build_step(name, model_name="small_cnn", batch=8, seed=5, runs=3, layout=layout)
    assert fused_step.model.layout == layout
    alone = [timing.build_step(name, model_name="small_cnn", batch=8, seed=5 + k)[0] for k in range(3)]

    def nets(step):
        return [step.model] if name == "ce" else [step.model, step.meta_step.weight_net]

    for k, step in enumerate(alone):
        for fused, single in zip(nets(fused_step), nets(step)):
            assert all(torch.equal(run_state(fused, k)[n], v) for n, v in single.state_dict().items())
    for _ in range(2):
        fused_step()
        for step in alone:
            step()
    for k, step in enumerate(alone):
        for fused, single in zip(nets(fused_step), nets(step)):
            state = run_state(fused, k)
            for n, v in single.state_dict().items():
                torch.testing.assert_close(state[n], v, rtol=1e-4, atol=1e-4, msg=f"run {k} {n}")


def test_fused_packing_times_the_fused_runs_in_turns_with_one_alone():
    r = packing.packing_fused("mwnet", 2, model_name="small_cnn", batch=8, device="cpu", iters=3, warmup=1)
    assert r["mode"] == "fused" and r["jobs"] == 2 and r["modes"] == ["eager"]
    assert r["alone_ms_per_iter"] > 0 and r["packed_ms_per_iter"] > 0 and r["ratio"] > 0


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
        packing.packing("nope", 2, model_name="small_cnn", batch=8, device="cpu", iters=1, warmup=0)
    ctx = multiprocessing.get_context("spawn")
    dying = ctx.Process(target=os._exit, args=(3,))
    dying.start()
    with pytest.raises(BenchError, match=r"a packed ce process died \(exit code 3\)"):
        packing._packed_results("ce", [dying], ctx.Queue())
    assert not dying.is_alive()


# ------------------------------------------------------------------ measure, ratios, layout and CLI without timing
# (fake steps on a hand-driven clock: every number below is exact, nothing is timed)

class _HandClock:
    """The time that timing.Timer reads, moved by the fake steps by hand (seconds)."""

    def __init__(self):
        self.t = 0.0

    def timer(self, device=None):
        return type("FakeTimer", (), {"now": lambda _: self.t})()


def _fake_build_step(hand, durations, phases=("batch", "meta_backward", "real_backward")):
    """A stand-in for timing.build_step: each call of the step takes the next entry of
    ``durations`` (ms per phase) and marks the phases as the real steps do."""
    calls = iter(durations)

    def build_step(name, *, device, graph=False, **_):
        captured = graph and device.type == "cuda"
        clock = None if captured else timing.PhaseClock(hand.timer())

        def step():
            if clock:
                clock.start()
            for phase, ms in zip(phases, next(calls)):
                hand.t += ms / 1000.0
                if clock:
                    clock(phase)
        step.graphed = type("Graphed", (), {"warmup": 2, "enabled": captured,
                                            "mode": "captured" if captured else "eager"})()
        return step, clock
    return build_step, calls


def test_measure_reports_medians_of_the_timed_iterations(monkeypatch):
    hand = _HandClock()
    monkeypatch.setattr(timing, "Timer", hand.timer)
    warm = [(100.0, 100.0, 100.0)]
    timed = [(1.0, 2.0, 3.0), (1.0, 1.0, 1.0), (5.0, 10.0, 15.0)]  # 6, 3, 30 ms; meta 2, 1, 10 ms
    build, calls = _fake_build_step(hand, warm + timed)
    monkeypatch.setattr(timing, "build_step", build)
    r = timing.measure("curvenet_sl0", model_name="small_cnn", batch=8, device="cpu", repeats=3, warmup=1)
    assert list(calls) == []  # warm-up + timed iterations, no more
    assert r["ms_per_iter"] == pytest.approx(6.0) and r["ms_per_iter_all"] == [6.0, 3.0, 30.0]
    assert r["meta_ms"] == pytest.approx(2.0) and r["meta_ms_all"] == [2.0, 1.0, 10.0]
    assert r["phase_ms"] == {"batch": 1.0, "meta_backward": 2.0, "real_backward": 3.0} and r["mode"] == "eager"
    # on CUDA the phases come from separate iterations (their marks synchronise) ...
    build, calls = _fake_build_step(hand, warm + timed + [(1.0, 7.0, 1.0)] * 3)
    monkeypatch.setattr(timing, "build_step", build)
    r = timing.measure("curvenet_sl0", model_name="small_cnn", batch=8, device="cuda", repeats=3, warmup=1)
    assert list(calls) == [] and r["ms_per_iter_all"] == [6.0, 3.0, 30.0] and r["meta_ms_all"] == [7.0] * 3
    # ... and a captured step warms up, is captured, then timed; it has no phases
    build, calls = _fake_build_step(hand, warm * 4 + timed)
    monkeypatch.setattr(timing, "build_step", build)
    r = timing.measure("curvenet_sl0", model_name="small_cnn", batch=8, device="cuda", repeats=3, warmup=1,
                       graph=True)
    assert list(calls) == [] and r["ms_per_iter_all"] == [6.0, 3.0, 30.0] and "meta_ms" not in r
    # a step whose hooks do not mark whole iterations is an error, not a silent meta time of 0
    build, _ = _fake_build_step(hand, warm + timed, phases=("batch", "meta_backward"))
    monkeypatch.setattr(timing, "build_step", build)
    with pytest.raises(RuntimeError, match="did not mark 3 whole iterations"):
        timing.measure("curvenet_sl0", model_name="small_cnn", batch=8, device="cpu", repeats=3, warmup=1)


def test_steps_are_timed_in_turns_after_each_ones_warm_up(monkeypatch):
    """measure_steps warms every step up (and captures it) first, then times them round-robin: a
    stall of the machine lands on one round of every step, and the paired ratio ignores it."""
    hand = _HandClock()
    monkeypatch.setattr(timing, "Timer", hand.timer)
    order = []
    # per round: CE 10 ms, SL=0 40 ms, except round 2 (CE stalled, 30) and round 3 (SL=0 stalled, 120)
    durations = {"ce": [(100.0, 0.0, 0.0)] + [(1.0, 0.0, 9.0), (1.0, 0.0, 29.0), (1.0, 0.0, 29.0)],
                 "curvenet_sl0": [(100.0, 0.0, 0.0)] + [(1.0, 4.0, 35.0), (1.0, 4.0, 35.0), (1.0, 4.0, 115.0)]}

    def build_step(name, *, device, graph=False, **_):
        step, clock = _fake_build_step(hand, durations[name])[0](name, device=device, graph=graph)

        def logged():
            order.append(name)
            step()
        logged.graphed = step.graphed
        return logged, clock
    monkeypatch.setattr(timing, "build_step", build_step)
    r = timing.measure_steps(["ce", "curvenet_sl0"], model_name="small_cnn", batch=8, device="cpu", repeats=3,
                             warmup=1)
    assert order == ["ce", "curvenet_sl0"] + ["ce", "curvenet_sl0"] * 3
    assert r["ce"]["ms_per_iter_all"] == [10.0, 30.0, 30.0]
    assert r["curvenet_sl0"]["ms_per_iter_all"] == [40.0, 40.0, 120.0]
    assert r["ce"]["phase_ms"] == {"batch": 1.0, "meta_backward": 0.0, "real_backward": 29.0}
    assert r["curvenet_sl0"]["meta_ms_all"] == [4.0] * 3
    ratio = timing.paired_ratio(r["curvenet_sl0"]["ms_per_iter_all"], r["ce"]["ms_per_iter_all"])
    assert ratio == pytest.approx(4.0)  # rounds 1 and 3 say 4; the medians (40 / 30) would say 1.33
    assert timing.paired_ratio([1.0], [2.0, 3.0]) is None and timing.paired_ratio([1.0], [0.0]) is None


def test_round_robin_records_each_step_per_round():
    hand = _HandClock()
    seen = []

    def step(name, durations):
        times = iter(durations)

        def run():
            seen.append(name)
            hand.t += next(times) / 1000.0
        return run
    turns = timing.RoundRobin({"a": step("a", [2.0, 6.0, 6.0]), "b": step("b", [6.0, 6.0, 18.0])}, hand.timer())
    for _ in range(3):
        turns.round()
    assert seen == ["a", "b"] * 3
    assert turns.ms == {"a": pytest.approx([2.0, 6.0, 6.0]), "b": pytest.approx([6.0, 6.0, 18.0])}
    assert turns.median("b") == pytest.approx(6.0)
    assert turns.ratio("b", "a") == pytest.approx(3.0)  # per round 3, 1, 3; the medians' ratio is 1


def _fake_measure_steps(calls):
    """Per round: CE 10 ms but 30 in rounds 2 and 3; SL=0 40, but 120 in round 3; SL=1 half SL=0."""
    ms = {"ce": [10.0, 30.0, 30.0], "curvenet_sl0": [40.0, 40.0, 120.0], "curvenet_sl1": [20.0, 20.0, 60.0]}
    meta = {"ce": [0.0] * 3, "curvenet_sl0": [8.0, 8.0, 16.0], "curvenet_sl1": [2.0, 2.0, 4.0]}
    phases = {"ce": {"batch": 1.0, "real_forward": 2.0, "real_backward": 3.0},
              "curvenet_sl0": {"batch": 3.0, "lookahead_forward": 2.0, "lookahead_backward": 2.0, "meta_forward": 1.0,
                               "meta_backward": 2.0, "jvp": 1.0, "weight_update": 1.0, "real_forward": 2.0,
                               "real_backward": 3.0}}
    phases["curvenet_sl1"] = phases["curvenet_sl0"]

    def measure_steps(names, *, device, graph=False, **_):
        calls.append((tuple(names), graph))
        out = {}
        for name in names:
            mode = ("captured" if name != "curvenet_sl1" else "eager (capture failed: X)") if graph else "eager"
            times = [v / (2 if graph else 1) for v in ms[name]]
            out[name] = {"ms_per_iter": sorted(times)[1], "ms_per_iter_all": times, "mode": mode,
                         "meta_ms": sorted(meta[name])[1], "meta_ms_all": meta[name], "phase_ms": phases[name]}
        return out
    return measure_steps


def test_run_all_paired_ratios_and_the_captured_column(monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(timing, "measure_steps", _fake_measure_steps(calls))
    steps = ["ce", "curvenet_sl0", "curvenet_sl1"]
    cpu = timing.run_all(steps, device="cpu", graph=True)  # no capture off CUDA, whatever asked
    assert calls == [(tuple(steps), False)] and not any("graph_mode" in r for r in cpu.values())
    sl0, sl1 = cpu["curvenet_sl0"], cpu["curvenet_sl1"]
    assert sl0["ratio_to_ce"] == 4.0  # per round 4, 1.33, 4: the median; the medians' ratio (40 / 30) is 1.33
    assert (sl1["ratio_to_ce"], sl1["ratio_to_sl0"], sl1["meta_ratio_to_sl0"]) == (2.0, 0.5, 0.25)
    assert cpu["ce"]["ratio_to_ce"] == 1.0 and cpu["ce"]["graph_ratio_to_ce"] is None
    assert sl1["paper_meta_ratio_to_sl0"] == 222.45 / 239.94 and "ratio_to_sl0" not in cpu["ce"]
    text = timing.render(cpu)
    assert "Captured steps: CUDA only" in text and "captured ms/iter" not in text
    assert "median of 3 rounds (the steps in turns)" in text and "in the same round" in text
    assert "CurveNet SL=0 2.00, CurveNet SL=1 2.00." in text  # (2+2+1+2+2+3) / CE's 6 ms

    calls.clear()
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    cuda = timing.run_all(steps, device="cuda")
    assert calls == [(tuple(steps), False), (tuple(steps), True)]
    assert cuda["ce"]["graph_ms_per_iter"] == 15.0 and cuda["curvenet_sl0"]["graph_ratio_to_ce"] == 4.0
    assert cuda["curvenet_sl1"]["graph_ms_per_iter"] is None and cuda["curvenet_sl1"]["graph_ratio_to_sl0"] is None
    assert cuda["curvenet_sl1"]["graph_ratio_to_ce"] is None and cuda["curvenet_sl1"]["ratio_to_ce"] == 2.0
    text = timing.render(cuda)
    assert "Captured steps: CUDA only" not in text and "captured ms/iter" in text
    assert "| eager (capture failed: X) |" in text


def test_cli_defaults_per_device_and_packing_iterations(monkeypatch, capsys):
    import argparse

    import torch

    from bench import execute

    seen = []
    monkeypatch.setattr(execute, "resolve_device", lambda name: torch.device(name))
    monkeypatch.setattr(timing, "run_all", lambda steps, **kw: seen.append(kw) or {})
    monkeypatch.setattr(packing, "packing", lambda name, jobs, **kw: seen.append(kw) or {"jobs": jobs})
    parser = argparse.ArgumentParser()
    timing.add_arguments(parser)

    def main(*argv):
        seen.clear()
        assert timing.main(parser.parse_args(["--json", *argv])) == 0
        capsys.readouterr()
        return [(kw.get("repeats", kw.get("iters")), kw["warmup"]) for kw in seen]

    assert main("--device", "cpu") == [(3, 1)] and main("--device", "cuda") == [(20, 5)]
    assert main("--device", "cpu", "--repeats", "4", "--warmup", "0") == [(4, 0)]
    assert main("--device", "cpu", "--pack", "2", "--steps", "ce") == [(10, 1)]  # at least 10 iterations
    assert main("--device", "cpu", "--pack", "2", "--steps", "ce", "--repeats", "12") == [(12, 1)]


def test_cli_options_reach_the_packing_and_cudnn_and_the_layout_is_channels_last_on_cuda_only(monkeypatch, capsys):
    """--pack-mode picks the packing, --memory-format sets the layout on CUDA (never on CPU),
    --no-cudnn-benchmark reaches torch's setting (while it measures; restored afterwards); and a
    real streams run on CPU, end to end."""
    import argparse
    import json

    import torch

    from bench import execute

    seen = []
    monkeypatch.setattr(execute, "resolve_device", lambda name: torch.device(name))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    for fn in ("packing", "packing_streams", "packing_fused"):
        monkeypatch.setattr(packing, fn, lambda name, jobs, _fn=fn, **kw:
                            seen.append((_fn, kw, torch.backends.cudnn.benchmark)) or {"jobs": jobs})
    parser = argparse.ArgumentParser()
    timing.add_arguments(parser)

    def main(*argv):
        seen.clear()
        assert timing.main(parser.parse_args(["--json", "--steps", "ce", "--pack", "2", *argv])) == 0
        capsys.readouterr()
        assert torch.backends.cudnn.benchmark is False  # as before
        return [(fn, kw["channels_last"], searched) for fn, kw, searched in seen]

    assert main("--device", "cpu") == [("packing", False, False)]
    assert main("--device", "cpu", "--memory-format", "channels_last", "--pack-mode", "streams") == [
        ("packing_streams", False, False)]
    assert main("--device", "cpu", "--pack-mode", "fused") == [("packing_fused", False, False)]
    # CUDA: cuDNN searches, as in training
    assert main("--device", "cuda", "--memory-format", "contiguous") == [("packing", False, True)]
    assert main("--device", "cuda", "--memory-format", "channels_last", "--no-cudnn-benchmark") == [
        ("packing", True, False)]
    monkeypatch.undo()
    result = subprocess.run([sys.executable, "-m", "bench", "timing", "--device", "cpu", "--model", "small_cnn",
                             "--steps", "ce", "--pack", "2", "--pack-mode", "streams", "--repeats", "2", "--warmup",
                             "0", "--batch-size", "8", "--json"], capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)["ce"]
    assert row["mode"] == "streams" and row["jobs"] == 2 and row["modes"] == ["eager"] and row["iters"] == 10


def test_packing_gives_each_of_n_processes_cores_over_n_threads(monkeypatch):
    """Each of N packed processes gets cores // N threads (alone: all), one barrier of N, and the
    iterations and warm-up asked for."""
    import multiprocessing
    import queue

    from bench import executors

    threads, barriers, timed = [], [], []

    class Process:
        exitcode = 0

        def __init__(self, target, args):
            self.args = args

        def start(self):  # reports at once: 24 ms per iteration over its threads, + 0, 1, 2 ms
            self.args[-1].put(("ok", (24.0 / self.args[2] + len(threads), "eager")))
            threads.append(self.args[2])
            timed.append(self.args[4:6])  # (iters, warmup)

        def is_alive(self):
            return False

        def join(self):
            pass

    ctx = type("Ctx", (), {"Barrier": lambda self, n: barriers.append(n), "Queue": lambda self: queue.Queue(),
                           "Process": lambda self, target, args: Process(target, args)})()
    monkeypatch.setattr(multiprocessing, "get_context", lambda kind: ctx)
    monkeypatch.setattr(executors, "available_cores", lambda: 4)
    r = packing.packing("ce", 2, model_name="small_cnn", batch=8, device="cpu", iters=7, warmup=3)
    assert threads == [4, 2, 2]
    assert barriers == [1, 2]  # the packed processes start their timed iterations together
    assert timed == [(7, 3)] * 3
    # the packed figure is the slowest process's (13 and 14 ms): the epoch of the runs ends with it
    assert (r["alone_ms_per_iter"], r["packed_ms_per_iter"], r["ratio"]) == (6.0, 14.0, 14.0 / 6.0)
    assert r["packed_ms_per_iter_each"] == [13.0, 14.0] and r["modes"] == ["eager"]


def test_steps_are_built_with_the_protocols_optimisers_and_stay_eager_off_cuda():
    from bench.spec import PRESETS
    from methods.curvenet import CurveNetParams

    step, clock = timing.build_step("ce", batch=8, graph=True)  # off CUDA: eager, so phases are marked
    assert clock is not None and not step.graphed.enabled
    sgd = step.graphed.optimizers[0].defaults
    p = PRESETS["paper"]
    assert (sgd["lr"], sgd["momentum"], sgd["nesterov"], sgd["weight_decay"]) == (
        p["lr"], p["momentum"], p["nesterov"], p["weight_decay"])
    step, _ = timing.build_step("curvenet_sl1", batch=8, precision="bf16")
    ms, cp = step.meta_step, CurveNetParams()
    assert step.graphed.optimizers == [ms.optimizer, ms.weight_opt] and ms.precision == "bf16"
    assert (ms.weight_opt.defaults["lr"], ms.weight_opt.defaults["weight_decay"]) == (cp.meta_lr,
                                                                                      cp.meta_weight_decay)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("channels_last", [True, False], ids=["runs-channels_last", "rows-contiguous"])
@pytest.mark.parametrize("name", ["ce", "mwnet", "curvenet_sl3"])
def test_a_fused_captured_step_is_the_seeds_captured_steps_on_cuda(name, channels_last):
    """On CUDA the fused step captures (one graph for the K runs) and, after 8 iterations, each
    run is where its own captured step leaves it (captured == eager tolerance, tests/test_capture.py)."""
    import torch

    from bench.fused import run_state

    kw = dict(model_name="resnet32", batch=32, device="cuda", graph=True, channels_last=channels_last)
    fused_step = timing.build_step(name, seed=5, runs=3, **kw)[0]
    assert fused_step.model.layout == ("runs" if channels_last else "rows")
    alone = [timing.build_step(name, seed=5 + k, **kw)[0] for k in range(3)]
    for _ in range(8):
        for step in (fused_step, *alone):
            step()
    torch.cuda.synchronize()
    assert fused_step.graphed.mode == "captured" and fused_step.graphed.replays > 0
    for k, step in enumerate(alone):
        nets = [(fused_step.model, step.model)]
        if name != "ce":
            nets.append((fused_step.meta_step.weight_net, step.meta_step.weight_net))
        for fused, single in nets:
            state = run_state(fused, k)
            for n, v in single.state_dict().items():
                torch.testing.assert_close(state[n].float(), v.float(), rtol=1e-3, atol=1e-4, msg=f"run {k} {n}")


def test_the_compiled_ce_step_is_the_ce_step_or_refused_and_only_timed_when_named():
    """``ce_compiled`` (the classifier under torch.compile) is not in the default steps. Built, it
    is checked against eager (bench/compiled.py); where this machine's compiled code passes, its
    step is the plain CE step's from the same seed and batch; where it fails, building it refuses
    (on session 13's CPU torch.compile passed at batch 16 and failed at 128)."""
    import torch

    from bench.compiled import CompileMismatch

    assert "ce_compiled" not in timing.STEPS and "ce_compiled" in timing.EXTRA_STEPS
    kw = dict(model_name="small_cnn", batch=16, seed=3)
    plain = timing.build_step("ce", **kw)[0]
    plain()
    try:
        compiled = timing.build_step("ce_compiled", **kw)[0]
    except CompileMismatch as exc:  # refused in one line that names the parameter and the pass
        assert "\n" not in str(exc) and re.search(r"the gradient of \S+ is off by .* at check pass \d+ of", str(exc))
    else:
        compiled()
        for (name, a), b in zip(compiled.model.state_dict().items(), plain.model.state_dict().values()):
            torch.testing.assert_close(a.float(), b.float(), rtol=1e-4, atol=1e-5, msg=name)


def test_the_compiled_ce_step_runs_the_checked_forward_in_the_plain_steps_place(monkeypatch):
    """With a faithful 'compiler' (the model's own computation: what a correct torch.compile
    gives), on every machine: ``ce_compiled`` calls the compiled forward once per step and steps
    bit-identically to ``ce``."""
    import torch

    import bench.compiled

    calls, real = [], bench.compiled.compile_checked

    class Faithful(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            calls.append(len(x))
            return self.model(x)

    monkeypatch.setattr(bench.compiled, "compile_checked",
                        lambda model, example, **kw: real(model, example, **{**kw, "compiler": Faithful}))
    kw = dict(model_name="small_cnn", batch=16, seed=3)
    compiled, plain = timing.build_step("ce_compiled", **kw)[0], timing.build_step("ce", **kw)[0]
    checked = len(calls)
    assert checked == bench.compiled.CHECK_STEPS
    compiled()
    plain()
    assert calls[checked:] == [16]
    for (name, a), b in zip(compiled.model.state_dict().items(), plain.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_refused_compiled_step_is_left_out_and_the_other_steps_are_still_timed(monkeypatch, capsys):
    """Where the compiled model fails its check (or does not compile), ``--steps ce,ce_compiled``
    still times CE, and says in one line why ``ce_compiled`` is missing; named alone, it is an error."""
    import bench.compiled
    from bench.compiled import CompileMismatch

    def refuse(model, example, **kw):
        raise CompileMismatch("the compiled model's gradient of fc.weight is off by 0.2")

    monkeypatch.setattr(bench.compiled, "compile_checked", refuse)
    kw = dict(model_name="small_cnn", batch=8, device="cpu", repeats=2, warmup=0)
    out = timing.run_all(["ce", "ce_compiled"], **kw)
    assert list(out) == ["ce"] and out["ce"]["ratio_to_ce"] == 1.0
    assert "bench: timing: ce_compiled left out: the compiled model's gradient" in capsys.readouterr().err
    assert "CE, torch.compile" not in timing.render(out)
    with pytest.raises(CompileMismatch):
        timing.run_all(["ce_compiled"], **kw)


def test_the_fixed_batch_ce_step_steps_on_the_first_batch_every_time():
    """``ce_fixed_batch`` (the CE step without the loader's work: what the loader costs) is only
    timed when named; its batch is the one the plain CE step's first iteration assembles, so their
    first steps agree bit for bit, and the later ones do not (the plain step's batches change)."""
    import torch

    assert "ce_fixed_batch" not in timing.STEPS and "ce_fixed_batch" in timing.EXTRA_STEPS
    kw = dict(model_name="small_cnn", batch=16, seed=3)
    fixed, plain = timing.build_step("ce_fixed_batch", **kw)[0], timing.build_step("ce", **kw)[0]
    fixed()
    plain()
    for a, b in zip(fixed.model.state_dict().values(), plain.model.state_dict().values()):
        assert torch.equal(a, b)
    fixed()
    plain()
    assert not all(torch.equal(a, b) for a, b in zip(fixed.model.parameters(), plain.model.parameters()))


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_the_compiled_ce_step_is_the_ce_step_on_cuda():
    """Captured, compiled CE = captured CE after 8 steps (same seed and batches; tests/test_capture.py's tolerance)."""
    import torch

    kw = dict(model_name="resnet32", batch=32, device="cuda", graph=True, seed=3)
    compiled, plain = timing.build_step("ce_compiled", **kw)[0], timing.build_step("ce", **kw)[0]
    for _ in range(8):
        compiled()
        plain()
    torch.cuda.synchronize()
    assert compiled.graphed.mode == "captured"
    for (name, a), b in zip(compiled.model.state_dict().items(), plain.model.state_dict().values()):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-3, atol=1e-4, msg=name)


def _fake_steps(monkeypatch, calls):
    """packing's build_step replaced: each built step records (its label, torch's thread count) per call."""
    import torch

    built = []

    def fake_build_step(name, **kw):
        label = f"runs={kw.get('runs', 1)}"

        def step():
            calls.append((label, torch.get_num_threads()))
        step.graphed = type("G", (), {"mode": "eager", "warmup": 2, "enabled": False})()
        built.append((name, kw))
        return step, None
    monkeypatch.setattr(packing, "build_step", fake_build_step)
    return built


def test_fused_packing_times_jobs_runs_fused_against_one_run_alone(monkeypatch):
    """--pack-mode fused: the packed step is build_step(runs=jobs) from the same seed and settings as
    the step alone; both warm up, then each steps once per timed round."""
    calls = []
    built = _fake_steps(monkeypatch, calls)
    r = packing.packing_fused("mwnet", 3, model_name="small_cnn", batch=8, device="cpu", iters=4, warmup=2, seed=5)
    assert [(name, kw.get("runs"), kw["seed"], kw["batch"]) for name, kw in built] == [
        ("mwnet", None, 5, 8), ("mwnet", 3, 5, 8)]
    assert sorted(label for label, _ in calls) == ["runs=1"] * 6 + ["runs=3"] * 6
    assert r["jobs"] == 3 and r["mode"] == "fused" and r["iters"] == 4


def test_a_packed_worker_sets_its_threads_warms_up_waits_for_the_others_then_times_its_iterations(monkeypatch):
    """One packed process (run here in this process): torch gets the worker's thread share before
    its step is built and run; warm-up, the barrier, then the timed iterations; its ms per iteration
    on the queue."""
    import queue

    import torch

    calls, events = [], []
    built = _fake_steps(monkeypatch, calls)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)

    class Barrier:
        def wait(self, timeout):
            events.append(len(calls))

        def abort(self):
            events.append("abort")

    before = torch.get_num_threads()
    share = before + 1
    q = queue.Queue()
    try:
        packing._packed_worker("ce", dict(device="cpu", seed=3, batch=8), share, False, 4, 2, Barrier(), q)
    finally:
        torch.set_num_threads(before)
    assert [(name, kw["seed"]) for name, kw in built] == [("ce", 3)]
    assert calls == [("runs=1", share)] * 6  # 2 warm-up, 4 timed, all on the worker's threads
    assert events == [2]  # the barrier after the warm-up, before the timed iterations
    kind, (ms, mode) = q.get_nowait()
    assert kind == "ok" and ms >= 0 and mode == "eager" and q.empty()
