"""bench/compiled.py: the classifier under a compiler, checked against eager before it is timed
or trained (`bench run --compile`)."""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_fused_runs import Killed

import methods
from bench.cli import main
from bench.compiled import CHECK_STEPS, CompileFailed, CompileMismatch, compile_checked, gradient_errors
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

    def kill_in_the_second_epoch(row):  # (epoch 0's checkpoint is written after its row is logged)
        if row.get("epoch") == 1:
            raise Killed

    with pytest.raises(Killed):
        execute(spec, device=CPU, cache_dir=tmp_path, checkpoint_every_s=0, options=COMPILED,
                progress=kill_in_the_second_epoch)
    rows = []
    resumed = execute(spec, device=CPU, cache_dir=tmp_path, checkpoint_every_s=0, options=COMPILED,
                      progress=rows.append)
    assert rows[0] == {"note": "resuming from its checkpoint (train, 1 epoch done)"}
    assert [row["epoch"] for row in rows[1:]] == [1]  # epoch 0 restored, not trained again
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


# ------------------------------------------------------------------ the check itself, sharper


def _grads(model, scale=1.0, drop=()):
    for name, p in model.named_parameters():
        p.grad = None if name in drop else torch.full_like(p, scale)


def test_gradient_errors_are_relative_to_the_eager_gradient_and_infinite_for_a_missing_one():
    torch.manual_seed(0)
    compiled, eager = build_model("small_cnn", 10, 1), build_model("small_cnn", 10, 1)
    _grads(eager)
    _grads(compiled, 3.0, drop=("fc.bias",))
    errors = gradient_errors(compiled, eager)
    assert errors.pop("fc.bias") == float("inf")
    assert all(e == pytest.approx(2.0) for e in errors.values())  # |3g - g| / |g|, not / |3g|
    _grads(eager, drop=("fc.bias",))
    assert "fc.bias" not in gradient_errors(compiled, eager)  # no gradient on either side: skipped


class _OneWrongGradient(_Faithful):
    """Right values; from the second call, fc.bias's gradient alone is 1.5 times too large."""

    def forward(self, x):
        out = super().forward(x)
        if self.calls == 1:
            return out
        bias = 0.5 * self.model.fc.bias
        return out + (bias - bias.detach())


def test_one_wrong_parameter_gradient_is_refused_and_named():
    model, _ = _model_and_state()
    with pytest.raises(CompileMismatch, match=r"gradient of fc\.bias is off by 5\.0e-01 .* check pass 2 of"):
        compile_checked(model, torch.empty(8, 1, 28, 28), compiler=_OneWrongGradient)


class _NanFromSecondCall(_Faithful):
    def forward(self, x):
        out = super().forward(x)
        return out if self.calls == 1 else out * float("nan")


def test_nan_gradients_are_refused():
    model, _ = _model_and_state()
    with pytest.raises(CompileMismatch, match="off by nan"):
        compile_checked(model, torch.empty(8, 1, 28, 28), compiler=_NanFromSecondCall)


class _NoBiasGradient(_Faithful):
    """fc.bias enters as a constant: no gradient for it."""

    def forward(self, x):
        self.calls += 1
        fc = self.model.fc
        return F.linear(self.model.features(x), fc.weight, fc.bias.detach())


def test_a_parameter_without_a_gradient_is_refused():
    model, _ = _model_and_state()
    with pytest.raises(CompileMismatch, match=r"gradient of fc\.bias is off by inf .* pass 1 of"):
        compile_checked(model, torch.empty(8, 1, 28, 28), compiler=_NoBiasGradient)


class _StaleWeights(_Faithful):
    """Computes with the parameter values of its first call (as a compiled graph that baked the
    weights in as constants), its gradients still reaching the model's parameters."""

    def forward(self, x):
        self.calls += 1
        if self.calls == 1:
            self.first = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        params = {n: p + (self.first[n] - p).detach() for n, p in self.model.named_parameters()}
        return torch.func.functional_call(self.model, params, (x,))


def test_a_compiler_that_keeps_the_first_weights_is_refused_after_the_checks_update():
    """Between passes both models take the same SGD step, so a compiled forward that does not
    see parameter updates differs from the second pass on."""
    model, _ = _model_and_state()
    with pytest.raises(CompileMismatch, match="check pass 2 of"):
        compile_checked(model, torch.empty(8, 1, 28, 28), compiler=_StaleWeights)


class _RecordsAutocast(_Faithful):
    seen: list = []

    def forward(self, x):
        _RecordsAutocast.seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return super().forward(x)


def test_the_compiled_forward_runs_under_the_precisions_autocast(monkeypatch):
    """bf16: the compiled model is checked (and so compared) under bf16 autocast, as training runs
    it; checked_forwards passes the loop's precision on."""
    import bench.compiled

    _RecordsAutocast.seen = []
    model, _ = _model_and_state()
    compile_checked(model, torch.empty(8, 1, 28, 28), precision="bf16", compiler=_RecordsAutocast)
    assert _RecordsAutocast.seen == [(True, torch.bfloat16)] * CHECK_STEPS
    _RecordsAutocast.seen = []
    monkeypatch.setattr(bench.compiled, "_compile", _RecordsAutocast)
    forwards, status = bench.compiled.checked_forwards([model], torch.empty(8, 1, 28, 28), "bf16")
    assert status == "compiled" and _RecordsAutocast.seen == [(True, torch.bfloat16)] * CHECK_STEPS


def test_the_compiler_is_asked_for_a_fixed_shape_graph(monkeypatch):
    import bench.compiled

    asked = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: asked.append(kw) or model)
    model = nn.Linear(2, 2)
    assert bench.compiled._compile(model) is model and asked == [{"dynamic": False}]
