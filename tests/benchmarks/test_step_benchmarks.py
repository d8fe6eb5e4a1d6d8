"""pytest-benchmark: one training iteration of CE, MW-Net and CurveNet at SL = 0..3 (Table 8).

CPU (every machine): the quick model, small_cnn, batch 128 (train and meta), 28x28x1 random
images through the real loader, built by ``bench.timing.build_step`` from the same code the
methods train with. CUDA (where present): ResNet-32 at batch 128, eager and captured as a CUDA
graph (bench/capture.py), fp32 and bf16; and packing by fusion, CE / MW-Net / CurveNet SL=3 for one
run alone and for 4 runs fused into one network (bench/fused.py), captured.

    pytest tests/benchmarks --benchmark-enable --benchmark-only

prints the mean/median per step, each followed in parentheses by its ratio to the fastest row of
the group, the CE step (the suite's CPU targets: MW-Net <= 3.0x CE, CurveNet SL=3 <= 1.5x CE).
Those steps are timed one after the other, so a stall of a shared machine during one of them moves
its ratio (MW-Net / CE: 2.57-3.71 over six runs on this 2-core VM).
``test_ratios_with_the_steps_in_turns`` times all six in turns instead (each round one iteration
of every step, ``bench.timing.RoundRobin``) and prints, under the tables, each step's median ms
and the median over rounds of its time over CE's in the same round: the ratios to quote (MW-Net /
CE: 3.30-3.40 over six runs). 30 rounds per step on CPU. In the default test run
(``--benchmark-disable`` in pyproject) each step executes once, as a smoke test.
``python -m bench timing`` gives the same steps with the paper's meta-time split and ratios.
"""

import pytest
import torch

from bench.capture import search_conv_algorithms
from bench.cpu import keep_freed_memory
from bench.timing import STEPS, RoundRobin, Timer, build_step

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module", autouse=True)
def _allocator():
    keep_freed_memory()  # as `python -m bench` does (bench/cpu.py)


@pytest.fixture(autouse=True)
def _cudnn_search_restored(monkeypatch):
    """search_conv_algorithms turns cuDNN's search on for the whole process: off again after each
    benchmark, so that the tests after these see the default."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)


@pytest.mark.parametrize("name", STEPS)
def test_train_step(benchmark, name):
    step, _ = build_step(name, model_name="small_cnn", batch=128, device="cpu")
    step()  # momentum buffers and the first-call overheads out of the way
    benchmark.group = "one training iteration: small_cnn, batch 128, CPU"
    benchmark.extra_info["step"] = name
    benchmark.pedantic(step, rounds=30, warmup_rounds=3)


def test_ratios_with_the_steps_in_turns(benchmark, record_ratios):
    steps = {name: build_step(name, model_name="small_cnn", batch=128, device="cpu")[0] for name in STEPS}
    for step in steps.values():
        for _ in range(3):
            step()
    turns = RoundRobin(steps, Timer(torch.device("cpu")))
    benchmark.group = "one round: an iteration of each step in turns, small_cnn, batch 128, CPU"
    benchmark.pedantic(turns.round, rounds=30, warmup_rounds=0)
    rounds = len(turns.ms["ce"])
    assert all(len(ms) == rounds for ms in turns.ms.values())
    ratios = {name: turns.ratio(name, "ce") for name in STEPS}
    benchmark.extra_info.update(rounds=rounds, median_ms={name: turns.median(name) for name in STEPS},
                                ratio_to_ce=ratios)
    if rounds > 1:  # benchmarks enabled (one round when disabled: a smoke test)
        record_ratios(f"small_cnn, batch 128, CPU, {torch.get_num_threads()} threads: the six steps in turns, "
                      f"{rounds} rounds",
                      {name: f"{turns.median(name):7.1f} ms  {ratios[name]:.2f}x CE (median of per-round ratios)"
                       for name in STEPS})


@pytest.mark.skipif(not CUDA, reason="CUDA only")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "captured"])
@pytest.mark.parametrize("name", STEPS)
def test_train_step_cuda(benchmark, name, graph, precision):
    search_conv_algorithms("cuda")  # as training does (bench/capture.py)
    step, _ = build_step(name, model_name="resnet32", batch=128, device="cuda", graph=graph, precision=precision)
    for _ in range(5):  # warm-up (and, captured, the capture itself)
        step()
    torch.cuda.synchronize()
    assert step.graphed.mode == ("captured" if graph else "eager"), step.graphed.mode

    def timed():
        step()
        torch.cuda.synchronize()
    benchmark.group = f"one training iteration: resnet32, batch 128, CUDA, {precision}, " + (
        "captured" if graph else "eager")
    benchmark.extra_info.update(step=name, graph=graph, precision=precision)
    benchmark.pedantic(timed, rounds=20, warmup_rounds=2)


@pytest.mark.skipif(not CUDA, reason="CUDA only")
@pytest.mark.parametrize("name", ["ce", "mwnet", "curvenet_sl3"])
@pytest.mark.parametrize("runs", [1, 4], ids=["alone", "4-fused"])
def test_fused_train_step_cuda(benchmark, name, runs):
    """Packing by horizontal fusion (bench/fused.py): one iteration of 4 runs fused into one
    network (runs layout, channels_last), next to one run alone (channels_last), captured, fp32. The target:
    4 runs' iteration at most 2x one run's (``python -m bench timing --pack 4 --pack-mode fused``
    times both in turns and prints the ratio)."""
    search_conv_algorithms("cuda")
    step, _ = build_step(name, model_name="resnet32", batch=128, device="cuda", graph=True, runs=runs)
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    assert step.graphed.mode == "captured", step.graphed.mode

    def timed():
        step()
        torch.cuda.synchronize()
    benchmark.group = f"packing by fusion: {name}, resnet32, batch 128 per run, CUDA, fp32, captured, channels_last"
    benchmark.extra_info.update(step=name, runs=runs)
    benchmark.pedantic(timed, rounds=20, warmup_rounds=2)
