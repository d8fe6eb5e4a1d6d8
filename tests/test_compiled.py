"""``--compile`` (bench/compiled.py): the classifier under torch.compile, checked against eager first."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.compiled import CHECK_STEPS, CompileMismatch, compile_checked
from bench.models import build_model
from bench.spec import RunSpec
from bench.train import train_classifier
from methods.base import Run


def _tiny_run(compile_steps: bool, n=48, k=3, batch_size=16, seed=0) -> Run:
    """A Run over synthetic 8x8 one-channel images (no augmentation, full batches only)."""
    g = np.random.default_rng(seed)
    x = g.integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)
    y = g.integers(0, k, size=n)
    data = SimpleNamespace(dataset=SimpleNamespace(mean=(0.5,), std=(0.25,), augment=False), x_train=x,
                           train_y=y, train_clean_y=y, is_noisy=np.zeros(n, bool), num_classes=k,
                           x_test=x[:16], y_test=y[:16], train_counts=np.bincount(y, minlength=k))
    spec = RunSpec(method="ce", batch_size=batch_size, epochs=2, warmup_epochs=0, milestones=())
    return Run(spec=spec, data=data, device=torch.device("cpu"), compile_steps=compile_steps)


def test_a_compiled_model_is_checked_then_handed_back_with_the_model_as_it_was():
    """torch.compile passes the check on this machine (gradients equal to eager ones within the
    tolerance over CHECK_STEPS passes), and the check leaves parameters, buffers and grads as they were."""
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compiled = compile_checked(model, torch.empty(16, 1, 28, 28))
    assert compiled is not model
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert set(compiled.state_dict()) == {f"_orig_mod.{k}" for k in before}  # the same tensors, wrapped


class _WrongFromSecondCall(nn.Module):
    """A 'compiler' whose model is right on its first call and wrong after: the logits are scaled
    by 1.1 from the second call on."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        out = self.model(x)
        return out if self.calls == 1 else 1.1 * out


def test_a_compiler_that_is_wrong_from_its_second_call_on_is_refused():
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CompileMismatch, match=rf"off by .* at check pass 2 of {CHECK_STEPS}"):
        compile_checked(model, torch.empty(8, 1, 28, 28), compiler=_WrongFromSecondCall)
    for k, v in model.state_dict().items():  # restored even when refused
        assert torch.equal(v, before[k]), k


def test_a_compiled_ce_run_trains_as_the_eager_one():
    """train_classifier with --compile ends where the eager loop ends (to float rounding), and the
    run says it compiled; without --compile nothing is compiled."""
    runs = {flag: _tiny_run(flag) for flag in (False, True)}
    models = {}
    for flag, run in runs.items():
        torch.manual_seed(1)
        models[flag] = train_classifier(run, run.model(), lambda logits, y, idx, epoch: F.cross_entropy(logits, y))
    assert runs[True].compile_mode == "compiled" and runs[False].compile_mode == "off"
    for (name, a), b in zip(models[True].state_dict().items(), models[False].state_dict().values()):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-4, atol=1e-5, msg=name)
    assert runs[True].history[-1]["loss"] == pytest.approx(runs[False].history[-1]["loss"], rel=1e-4)


def test_when_compiling_fails_the_loop_trains_eagerly_and_says_so(monkeypatch, capsys):
    import bench.compiled

    def fail(model, example, precision):
        raise CompileMismatch("torch.compile disagrees with eager on this machine: (test)")

    monkeypatch.setattr(bench.compiled, "compile_checked", fail)
    run = _tiny_run(True)
    model = run.model()
    assert run.compiled(model, 16) is model
    assert run.compile_mode == "eager (compile failed)"
    assert "--compile: torch.compile disagrees with eager on this machine: (test); training eagerly" \
        in capsys.readouterr().err
