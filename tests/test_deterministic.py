"""``bench run --deterministic``: deterministic kernels only (bench/capture.py, ``run_kernels``).

On CPU every op here is deterministic already, so what can be checked without a GPU is that no
method runs an op that torch lists as having no deterministic CUDA kernel (such an op would fail
a ``--deterministic`` CUDA run), and the option's plumbing. On CUDA: two runs give the same bits.
"""

import json
import os

import numpy as np
import pytest
import torch
from test_resume_methods import quick_spec
from torch.utils._python_dispatch import TorchDispatchMode

import methods
from bench.capture import CUBLAS_DETERMINISTIC_WORKSPACE, run_kernels
from bench.cli import main
from bench.execute import RunOptions, execute
from bench.fused_runs import FusedGroup, execute_fused
from bench.store import Store
from methods.base import Method, NoParams

CPU = torch.device("cpu")
DETERMINISTIC = RunOptions(deterministic=True)

# The aten ops that torch.use_deterministic_algorithms's docstring (torch 2.14) lists as raising a
# RuntimeError on CUDA under it, having no deterministic CUDA kernel; ``None``: always, else only
# for the calls the predicate picks (it reads the arguments by their names in the op's schema).
NO_DETERMINISTIC_CUDA_KERNEL = {
    **dict.fromkeys([
        "avg_pool3d_backward", "_adaptive_avg_pool2d_backward", "_adaptive_avg_pool3d_backward",
        "adaptive_max_pool2d_backward", "fractional_max_pool2d_backward", "fractional_max_pool3d_backward",
        "max_unpool2d", "max_unpool3d", "upsample_linear1d_backward", "upsample_bilinear2d_backward",
        "upsample_bicubic2d_backward", "upsample_trilinear3d_backward", "reflection_pad1d_backward",
        "reflection_pad2d_backward", "reflection_pad3d_backward", "_ctc_loss_backward", "put", "put_",
        "histc", "grid_sampler_2d_backward", "grid_sampler_3d_backward"]),
    "nll_loss2d_forward": lambda a: a["reduction"] != 0,   # a 'mean' or 'sum' reduction
    "_embedding_bag_backward": lambda a: a["mode"] == 2,   # 'max'
    "bincount": lambda a: a.get("weights") is not None,
    "median": lambda a: "dim" in a,                         # with indices
    "nanmedian": lambda a: "dim" in a,
    "scatter_reduce": lambda a: a["reduce"] == "prod",
    "scatter_reduce_": lambda a: a["reduce"] == "prod",
}


def lacks_deterministic_cuda_kernel(func, args, kwargs) -> bool:
    name = func._schema.name.split("::")[-1]
    if name not in NO_DETERMINISTIC_CUDA_KERNEL:
        return False
    picks = NO_DETERMINISTIC_CUDA_KERNEL[name]
    return picks is None or picks({a.name: v for a, v in zip(func._schema.arguments, args)} | kwargs)


class _OpNames(TorchDispatchMode):
    """The aten ops run while active (below autograd: backward and forward-mode ops included), and
    the calls among them without a deterministic CUDA kernel."""

    def __init__(self):
        super().__init__()
        self.names, self.offending = set(), set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.names.add(func._schema.name)
        if lacks_deterministic_cuda_kernel(func, args, kwargs):
            self.offending.add(str(func))
        return func(*args, **kwargs)


def test_the_list_picks_the_calls_torch_names():
    """The predicates read the arguments where the schemas put them."""
    x, y = torch.randn(4, 3, 2, 2), torch.zeros(4, 2, 2, dtype=torch.long)
    with _OpNames() as ops:
        torch.nn.functional.nll_loss(x, y, reduction="none")
        torch.bincount(torch.tensor([0, 1, 1]))
        torch.median(torch.randn(5))
        torch.randn(3).scatter_reduce(0, torch.tensor([0, 0]), torch.ones(2), reduce="sum")
    assert ops.offending == set() and "aten::bincount" in ops.names
    for call in (lambda: torch.nn.functional.nll_loss(x, y),
                 lambda: torch.bincount(torch.tensor([0, 1, 1]), weights=torch.ones(3)),
                 lambda: torch.median(torch.randn(5, 2), dim=0),
                 lambda: torch.randn(3).scatter_reduce(0, torch.tensor([0, 0]), torch.ones(2), reduce="prod"),
                 lambda: torch.histc(torch.randn(9))):
        with _OpNames() as ops:
            call()
        assert len(ops.offending) == 1, ops.offending


@pytest.mark.usefixtures("small_pools")
@pytest.mark.parametrize("name", methods.names())
def test_no_method_runs_an_op_without_a_deterministic_cuda_kernel(name):
    """Every op of a whole run (training, records, evaluation) has a deterministic CUDA kernel, so
    ``--deterministic`` never fails a run of a registered method on a GPU for want of one."""
    with _OpNames() as ops:
        result = execute(quick_spec(name, epochs=1), device=CPU, cache_dir=None)
    assert result.status == "done", result.error
    assert "aten::convolution_backward" in ops.names  # the recorder saw the backward passes
    assert ops.offending == set(), f"{name} runs {sorted(ops.offending)} (no deterministic CUDA kernel)"


@pytest.mark.usefixtures("small_pools")
@pytest.mark.parametrize("name", ["mwnet", "curvenet"])
def test_no_fused_group_runs_an_op_without_a_deterministic_cuda_kernel(name):
    """The same for ``--fuse`` (grouped convolutions, interleaved rows, fused embeddings)."""
    spec = quick_spec(name, epochs=1)
    group = FusedGroup(tuple(spec.replace(seed=s, data_seed=s) for s in (0, 1)))
    with _OpNames() as ops:
        results = execute_fused(group, device=CPU)
    assert [r.status for r in results] == ["done", "done"], [r.error for r in results]
    assert results[0].env["fused"] == 2
    assert ops.offending == set(), f"fused {name} runs {sorted(ops.offending)} (no deterministic CUDA kernel)"


@pytest.mark.usefixtures("small_pools")
def test_deterministic_runs_record_it_and_leave_torch_as_it_was():
    """On CPU, where the kernels are deterministic anyway, the option changes no number; the run's
    env says it ran so, and torch's settings are back afterwards."""
    spec = quick_spec("curvenet", epochs=1)  # embeddings, forward-mode JVP, meta steps
    plain = execute(spec, device=CPU, cache_dir=None)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    strict = execute(spec, device=CPU, cache_dir=None, options=DETERMINISTIC)
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark) == before
    assert strict.status == "done", strict.error
    assert strict.env["deterministic"] is True and "deterministic" not in plain.env
    assert strict.metrics == plain.metrics
    for record, values in plain.values.items():
        np.testing.assert_array_equal(strict.values[record], values, err_msg=record)


def test_run_kernels_turns_the_search_off_and_restores_it(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    with run_kernels("cuda"):
        assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert not torch.backends.cudnn.benchmark  # the search's setting is restored on exit
    with run_kernels("cuda", deterministic=True):
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_DETERMINISTIC_WORKSPACE
    assert not torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    assert not torch.are_deterministic_algorithms_enabled()


def test_deterministic_kernels_are_strict_even_where_torch_was_set_to_warn_only():
    """``--deterministic`` promises deterministic kernels, not warnings: a process left in
    torch's warn-only mode is made strict for the run and put back afterwards."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with run_kernels("cpu", deterministic=True):
            assert torch.are_deterministic_algorithms_enabled()
            assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


class _PutsValues(Method):
    """Calls ``Tensor.put_``, which torch lists as having no deterministic kernel on any device."""

    name = "puts_values"
    Params = NoParams

    def fit(self, run):
        model = run.model()
        torch.zeros(4).put_(torch.tensor([0, 0]), torch.ones(2))
        return model


def test_an_op_without_a_deterministic_kernel_fails_the_run_with_its_name(monkeypatch):
    monkeypatch.setitem(methods._REGISTRY, "puts_values", _PutsValues)
    spec = quick_spec("ce", epochs=1).replace(method="puts_values", params=())
    assert execute(spec, device=CPU, cache_dir=None).status == "done"
    failed = execute(spec, device=CPU, cache_dir=None, options=DETERMINISTIC)
    assert failed.status == "failed"
    assert "put_" in failed.error and "deterministic" in failed.error


def test_the_cli_option_reaches_the_runs_and_sets_cublas_first(tmp_path, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    store = tmp_path / "r.sqlite"
    assert main(["run", "--methods", "ce", "--epochs", "1", "--device", "cpu", "--quiet", "--deterministic",
                 "--store", str(store), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_DETERMINISTIC_WORKSPACE
    env = json.loads(Store(store, create=False).runs("done")["env_json"][0])
    assert env["deterministic"] is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["ce", "mwnet", "curvenet", "coteaching"])
def test_two_deterministic_cuda_runs_give_the_same_bits(name):
    """Captured steps, channels_last, the meta steps' second-order passes: the same bits twice."""
    spec = quick_spec(name, epochs=2)
    first, second = (execute(spec, device=torch.device("cuda"), cache_dir=None, options=DETERMINISTIC)
                     for _ in range(2))
    assert first.status == second.status == "done", (first.error, second.error)
    assert first.env["deterministic"] is True
    print(name, "steps:", first.env["steps"])  # captured under deterministic kernels, or why not (-rA)
    assert first.metrics == second.metrics and first.history == second.history
    for record, values in first.values.items():
        np.testing.assert_array_equal(second.values[record], values, err_msg=record)
