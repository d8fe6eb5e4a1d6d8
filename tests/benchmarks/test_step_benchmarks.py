"""pytest-benchmark: one training iteration of CE, MW-Net and CurveNet at SL = 0..3 (Table 8).

The quick model on CPU: small_cnn, batch 128 (train and meta), 28x28x1 random images through the
real loader, built by ``bench.timing.build_step`` from the same code the methods train with.

    pytest tests/benchmarks --benchmark-enable --benchmark-only

prints the mean/median per step; divide by the CE row (or the SL=0 row) for the ratios. In the
default test run (``--benchmark-disable`` in pyproject) each step executes once, as a smoke test.
``python -m bench timing`` gives the same steps with the paper's meta-time split and ratios.
"""

import pytest

from bench.timing import STEPS, build_step


@pytest.mark.parametrize("name", STEPS)
def test_train_step(benchmark, name):
    step, _ = build_step(name, model_name="small_cnn", batch=128, device="cpu")
    step()  # momentum buffers and the first-call overheads out of the way
    benchmark.group = "one training iteration: small_cnn, batch 128, CPU"
    benchmark.extra_info["step"] = name
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
