"""bench/compiled.py: the classifier under a compiler, checked against eager before it is timed."""

import pytest
import torch
import torch.nn as nn

from bench.compiled import CHECK_STEPS, CompileFailed, CompileMismatch, compile_checked
from bench.models import build_model


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
