"""bench/compiled.py: the classifier under a compiler, checked against eager before it is timed
or trained (`bench run --compile`)."""

import json

import pytest
import torch
import torch.nn as nn
from test_fused_runs import Killed

import methods
from bench.cli import main
from bench.compiled import CHECK_STEPS, CompileFailed, CompileMismatch, compile_checked
from bench.execute import RunOptions, execute
from bench.fused_runs import FusedGroup, execute_fused
from bench.models import build_model
from bench.spec import RunSpec
from bench.store import Store
from methods.base import params_items

COMPILED = RunOptions(compile=True)


class _Faithful(nn.Module):
    """A 'compiler' that returns the model's own computation (what a correct compiler gives)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


class _WrongFromSecondCall(_Faithful):
    """Right on its first call, wrong after: the logits are scaled by 1.1 from the second call on."""

    def forward(self, x):
        out = super().forward(x)
        return out if self.calls == 1 else 1.1 * out


def _model_and_state():
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1).train()
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def test_a_faithful_compiler_passes_every_check_pass_and_the_model_is_left_as_it_was():
    model, before = _model_and_state()
    compiled = compile_checked(model, torch.empty(8, 1, 28, 28), compiler=_Faithful)
    assert isinstance(compiled, _Faithful) and compiled.model is model and compiled.calls == CHECK_STEPS
    for k, v in model.state_dict().items():  # parameters and BatchNorm statistics restored
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_a_compiler_that_is_wrong_from_its_second_call_on_is_refused():
    model, before = _model_and_state()
    with pytest.raises(CompileMismatch, match=rf"off by .* at check pass 2 of {CHECK_STEPS}"):
        compile_checked(model, torch.empty(8, 1, 28, 28), compiler=_WrongFromSecondCall)
    for k, v in model.state_dict().items():  # restored even when refused
        assert torch.equal(v, before[k]), k


class _Broken(_Faithful):
    """A 'compiler' that fails when first called, as TorchInductor does without a C++ compiler."""

    def forward(self, x):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\n(a long traceback)")


def test_a_compiler_that_fails_is_one_line_and_the_model_is_left_as_it_was():
    model, before = _model_and_state()
    with pytest.raises(CompileFailed) as failed:
        compile_checked(model, torch.empty(8, 1, 28, 28), compiler=_Broken)
    assert str(failed.value) == ("torch.compile failed on this machine: RuntimeError: InvalidCxxCompiler: "
                                 "No working C++ compiler found")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


# ------------------------------------------------------------------ bench run --compile

CPU = torch.device("cpu")


@pytest.fixture
def compilers(monkeypatch):
    """``bench run --compile``'s compiler replaced: each test sets ``compilers.kind`` (a 'compiler'
    class above); every model it compiled is in ``compilers.made``."""
    import bench.compiled

    class Compilers:
        kind = _Faithful
        made: list = []

    def compile_(model):
        Compilers.made.append(Compilers.kind(model))
        return Compilers.made[-1]

    Compilers.made = []
    monkeypatch.setattr(bench.compiled, "_compile", compile_)
    return Compilers


def test_bench_run_compile_runs_the_checked_compiled_forward_on_the_full_batches(compilers):
    """A faithful compiler: the run is the run without --compile, bit for bit (the check leaves
    the model as it was), and the compiled forward ran the check's passes and every full batch;
    the epoch's last, short batch (a shape the check did not see) ran the model itself."""
    spec = RunSpec(method="ce", epochs=2, batch_size=96)
    plain = execute(spec, device=CPU, cache_dir=None)
    compiled = execute(spec, device=CPU, cache_dir=None, options=COMPILED)
    assert "compile" not in plain.env and compiled.env["compile"] == "compiled"
    assert compiled.history == plain.history and compiled.metrics == plain.metrics
    pool = len(plain.samples["observed_label"])
    assert pool % 96 != 0
    (forward,) = compilers.made
    assert forward.calls == CHECK_STEPS + 2 * (pool // 96)


def test_a_killed_compiled_run_resumes_to_the_uninterrupted_result(compilers, tmp_path):
    """A loop compiles and checks its model before it restores its checkpoint: a --compile run
    killed after its first epoch resumes to the uninterrupted run, bit for bit."""
    spec = RunSpec(method="ce", epochs=2)
    reference = execute(spec, device=CPU, cache_dir=tmp_path / "ref", options=COMPILED)

    def kill_after_the_first_epoch(row):
        if row.get("epoch") == 0:
            raise Killed

    with pytest.raises(Killed):
        execute(spec, device=CPU, cache_dir=tmp_path, checkpoint_every_s=0, options=COMPILED,
                progress=kill_after_the_first_epoch)
    resumed = execute(spec, device=CPU, cache_dir=tmp_path, checkpoint_every_s=0, options=COMPILED)
    assert resumed.env["compile"] == "compiled"
    assert resumed.history == reference.history and resumed.metrics == reference.metrics


def test_a_refused_compile_trains_uncompiled_and_says_why_once(compilers, capsys):
    """A compiler the check refuses (wrong from its second call): each of AUM's three loops (two
    scoring runs, the retrain) trains uncompiled, the run says so once, its env keeps the reason."""
    compilers.kind = _WrongFromSecondCall
    params = params_items(methods.get("aum").resolve_params("paper", {"aum_epochs": "1"}))
    spec = RunSpec(method="aum", epochs=1, params=params)
    plain = execute(spec, device=CPU, cache_dir=None)
    capsys.readouterr()
    refused = execute(spec, device=CPU, cache_dir=None, options=COMPILED)
    assert refused.history == plain.history and refused.metrics == plain.metrics
    assert len(compilers.made) == 3
    assert refused.env["compile"].startswith("uncompiled: torch.compile disagrees with eager on this machine: ")
    lines = capsys.readouterr().err.splitlines()
    assert len([line for line in lines if "torch.compile" in line]) == 1
    assert lines[0].startswith("bench: torch.compile disagrees")
    assert lines[0].endswith("; this loop's steps run uncompiled")


def test_co_teachings_two_networks_compile_together_or_not_at_all(compilers, capsys):
    """Co-teaching's loop compiles both networks (each checked); a faithful compiler gives the run
    without --compile, bit for bit. Where the second network's check refuses, neither network's
    compiled forward trains: the first ran the check's passes alone."""
    spec = RunSpec(method="coteaching", epochs=1, batch_size=96)
    plain = execute(spec, device=CPU, cache_dir=None)
    compiled = execute(spec, device=CPU, cache_dir=None, options=COMPILED)
    assert compiled.env["compile"] == "compiled"
    assert compiled.history == plain.history and compiled.metrics == plain.metrics
    pool = len(plain.samples["observed_label"])
    assert pool % 96 != 0 and [f.calls for f in compilers.made] == [CHECK_STEPS + pool // 96] * 2
    compilers.made = []
    compilers.kind = lambda model: (_WrongFromSecondCall if compilers.made else _Faithful)(model)
    capsys.readouterr()
    refused = execute(spec, device=CPU, cache_dir=None, options=COMPILED)
    assert refused.env["compile"].startswith("uncompiled: torch.compile disagrees with eager on this machine: ")
    assert refused.history == plain.history and refused.metrics == plain.metrics
    assert [f.calls for f in compilers.made] == [CHECK_STEPS, 2]  # the second refused at its second pass
    assert "this loop's steps run uncompiled" in capsys.readouterr().err


@pytest.mark.usefixtures("small_pools")
def test_a_fused_group_compiles_its_fused_steps_and_each_runs_steps_alone(compilers):
    """bench run --fuse 2 --compile, AUM: its two scoring runs' fused steps (full fused batches, as
    FusedLoader.example gives them) and each run's retrain alone are compiled: four compiled
    models; with a faithful compiler each run is the run of the group without --compile."""
    params = params_items(methods.get("aum").resolve_params("paper", {"aum_epochs": "1"}))
    group = FusedGroup(tuple(RunSpec(method="aum", epochs=1, params=params, seed=s, data_seed=s) for s in (0, 1)))
    plain = execute_fused(group, device=CPU)
    compiled = execute_fused(group, device=CPU, options=COMPILED)
    for mine, theirs in zip(compiled, plain):
        assert mine.status == theirs.status == "done"
        assert mine.history == theirs.history and mine.metrics == theirs.metrics
        assert mine.env["compile"] == "compiled" and "compile" not in theirs.env
    pool = len(plain[0].samples["observed_label"])
    scoring = [forward.calls for forward in compilers.made[:2]]
    assert pool >= 2 * 128 and len(compilers.made) == 4 and scoring == [CHECK_STEPS + pool // 128] * 2


def test_bench_run_compile_through_the_cli(compilers, tmp_path):
    store = tmp_path / "store.sqlite"
    assert main(["run", "--methods", "ce", "--epochs", "1", "--compile", "--quiet", "--store", str(store),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    env = json.loads(Store(store, create=False).runs("done")["env_json"][0])
    assert env["compile"] == "compiled" and len(compilers.made) == 1


def test_a_real_torch_compile_trains_as_eager_does_or_is_refused_in_one_line():
    """torch.compile itself (TorchInductor's C++ code here, Triton on CUDA) in a CE run at batch
    16, where on this suite's CPUs the check passed (session 13): the run then ends near the eager
    run (float rounding: the compiled kernels sum in another order); where it is refused, the
    reason is torch.compile's."""
    spec = RunSpec(method="ce", epochs=1, batch_size=16)
    eager = execute(spec, device=CPU, cache_dir=None)
    compiled = execute(spec, device=CPU, cache_dir=None, options=COMPILED)
    assert compiled.status == "done"
    if compiled.env["compile"] == "compiled":
        assert compiled.history[-1]["loss"] == pytest.approx(eager.history[-1]["loss"], rel=0.05)
        assert abs(compiled.metrics["acc_last"] - eager.metrics["acc_last"]) < 5.0
    else:
        assert compiled.env["compile"].startswith("uncompiled: torch.compile ")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bench_run_compile_on_cuda_captures_the_compiled_steps():
    """On CUDA the compiled forward runs inside the captured step (Triton kernels in a CUDA graph)."""
    spec = RunSpec(method="ce", epochs=2)
    eager = execute(spec, device=torch.device("cuda"), cache_dir=None)
    compiled = execute(spec, device=torch.device("cuda"), cache_dir=None, options=COMPILED)
    assert compiled.env["compile"] == "compiled", compiled.env["compile"]
    assert compiled.env["steps"] == eager.env["steps"] == "captured"
    assert abs(compiled.metrics["acc_last"] - eager.metrics["acc_last"]) < 5.0
