import numpy as np
import pytest

from bench.models import build_model
from bench.train import Diverged, accuracy_report, check_finite, lr_at, shot_groups


def test_lr_schedule_is_the_protocol():
    kw = dict(lr=0.1, warmup_epochs=5, milestones=(80, 100), lr_decay=0.1)
    assert [round(lr_at(e, **kw), 6) for e in range(6)] == [0.02, 0.04, 0.06, 0.08, 0.1, 0.1]
    assert lr_at(79, **kw) == pytest.approx(0.1)
    assert lr_at(80, **kw) == pytest.approx(0.01)
    assert lr_at(99, **kw) == pytest.approx(0.01)
    assert lr_at(100, **kw) == pytest.approx(0.001)
    assert lr_at(199, **kw) == pytest.approx(0.001)


def test_shot_groups_use_the_long_tail_thresholds():
    groups = shot_groups(np.array([4900, 101, 100, 20, 19, 5]))
    assert groups["many"].tolist() == [0, 1]
    assert groups["medium"].tolist() == [2, 3]
    assert groups["few"].tolist() == [4, 5]


def test_accuracy_report_by_hand():
    target = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 0, 1, 1, 0, 2, 0])
    report = accuracy_report(pred, target, 3, train_counts=[500, 50, 10])
    assert report["acc"] == pytest.approx(100 * 5 / 8)
    assert report["per_class"] == pytest.approx([75.0, 50.0, 50.0])
    assert (report["many"], report["medium"], report["few"]) == (75.0, 50.0, 50.0)
    balanced = accuracy_report(pred, target, 3, train_counts=[500, 500, 500])
    assert balanced["medium"] is None and balanced["few"] is None



def test_shot_group_accuracy_is_the_mean_of_its_classes_accuracies():
    # classes 0 and 1 are both many-shot, with 4 and 1 test samples: the group's figure is the mean
    # of the two class accuracies (100 and 0 -> 50), not the pooled accuracy of its 5 samples (80)
    target = np.array([0, 0, 0, 0, 1, 2])
    pred = np.array([0, 0, 0, 0, 0, 2])
    report = accuracy_report(pred, target, 3, train_counts=[300, 200, 50])
    assert report["per_class"] == [100.0, 0.0, 100.0]
    assert report["many"] == pytest.approx((100.0 + 0.0) / 2) and report["medium"] == 100.0
    assert report["few"] is None

def test_nan_loss_is_divergence():
    check_finite(3, loss=1.0)
    with pytest.raises(Diverged, match="^diverged at train epoch 4: loss is nan$"):  # counted from 1
        check_finite(3, loss=float("nan"))
    with pytest.raises(Diverged, match="^diverged at probe epoch 1: loss is inf$"):
        check_finite(0, "probe", loss=float("inf"))


def test_weights_or_statistics_that_blew_up_are_divergence_though_the_loss_is_finite(tmp_path, capsys):
    """A huge learning rate can leave the loss finite (about 5.7 by the third epoch here) while
    BatchNorm's running variance is infinite and every test image gets one class: the run fails
    as diverged, naming the tensor, and is not stored as done."""
    import torch

    from bench.cli import main
    from bench.store import Store
    from bench.train import check_finite_model, nonfinite_tensor

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    assert nonfinite_tensor(model.state_dict()) is None
    model[1].running_var[1] = float("inf")
    assert nonfinite_tensor(model.state_dict()) == "1.running_var"
    with pytest.raises(Diverged, match="^diverged at train epoch 2: 1.running_var holds NaN or inf$"):
        check_finite_model(1, "train", model)
    store = tmp_path / "s.sqlite"
    assert main(["run", "--methods", "ce", "--epochs", "3", "--set", "lr=50", "--store", str(store),
                 "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 1
    (error,) = Store(store, create=False).runs("failed")["error"]
    assert error.startswith("diverged at train epoch 1: ") and error.endswith("holds NaN or inf")


def test_resnet32_is_the_cifar_resnet():
    import torch
    model = build_model("resnet32", 10)
    assert sum(p.numel() for p in model.parameters()) == 464154  # 0.46 M, as MW-Net / LDAM-DRW
    assert [n for n, _ in model.blocks()] == ["stem", "layer1", "layer2", "layer3", "fc"]
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [5, 5, 5]
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    # option-A shortcuts have no parameters: only convs, BNs and the final linear layer do
    assert all(("conv" in n or "bn" in n or n.startswith(("stem", "fc"))) for n, _ in model.named_parameters())


def test_models_build_by_name_and_reject_unknown():
    import torch

    from bench.errors import BenchError
    wrn = build_model("wrn16_8", 10)
    assert wrn.layer1[0].conv1.out_channels == 128 and len(wrn.layer1) == 2
    assert build_model("small_cnn", 10, in_channels=1)(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(BenchError, match="resnet32"):
        build_model("resnet18", 10)


def _ce_run(**spec_kw):
    import torch

    from bench.data import BiasSpec, load_dataset, make_biased
    from bench.spec import RunSpec
    from methods.base import Run, params_items
    from methods.ce import CE

    params = CE.resolve_params("quick")
    spec = RunSpec(method="ce", params=params_items(params), **spec_kw)
    data = make_biased(load_dataset(spec.dataset), BiasSpec(spec.imbalance, spec.noise_type, spec.noise_rate,
                                                            spec.meta_per_class, spec.data_seed))
    return Run(spec=spec, data=data, device=torch.device("cpu"), params=params)


def test_set_lr_fills_a_captured_steps_tensor_lr_in_place():
    """A captured step reads its lr from a tensor: set_lr must change that tensor, not replace it."""
    import torch

    from bench.train import set_lr

    p = torch.nn.Parameter(torch.zeros(2))
    tensor_lr = torch.tensor(0.1)
    opt = torch.optim.SGD([{"params": [p], "lr": tensor_lr}, {"params": [torch.nn.Parameter(torch.zeros(1))]}],
                          lr=0.1)
    set_lr(opt, 0.25)
    assert opt.param_groups[0]["lr"] is tensor_lr and tensor_lr.item() == 0.25
    assert opt.param_groups[1]["lr"] == 0.25


def test_train_classifier_steps_at_each_epochs_lr_on_the_given_loader_optimizer_and_epochs():
    """train_classifier sets the epoch's scheduled lr on the optimiser it is given before the epoch
    starts (on_epoch_start sees it), trains the given loader's samples, the given number of epochs,
    and logs each epoch's loss as the mean over samples (batches weighted by their size)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from bench.train import train_classifier

    run = _ce_run(epochs=1, warmup_epochs=2, milestones=(), lr=0.1)
    torch.manual_seed(0)
    model = run.model()
    optimizer = run.sgd(model.parameters())
    loader = run.loader("train", indices=np.arange(40), batch_size=16)  # batches of 16, 16, 8
    seen, started = [], []

    def loss_fn(logits, y, idx, epoch):
        seen.append((epoch, idx.tolist()))
        return F.cross_entropy(logits, y) * 0 + (1.0 if len(y) == 16 else 4.0)  # batch loss by batch size

    train_classifier(run, model, loss_fn, epochs=2, optimizer=optimizer, loader=loader,
                     on_epoch_start=lambda e: started.append((e, optimizer.param_groups[0]["lr"])))
    assert started == [(0, 0.05), (1, 0.1)]  # warm-up: 0.05 then 0.1
    assert [row["lr"] for row in run.history] == [0.05, 0.1]
    for epoch in (0, 1):
        idx = sorted(i for e, batch in seen if e == epoch for i in batch)
        assert idx == list(range(40))  # every sample of the given loader once, nothing else
    losses = [row["loss"] for row in run.history]
    assert losses == [(16 * 1.0 + 16 * 1.0 + 8 * 4.0) / 40] * 2  # 2.0: per sample, not per batch


def test_a_class_with_no_test_sample_is_left_out_of_its_groups_mean():
    target = np.array([0, 0, 2, 2])
    pred = np.array([0, 1, 2, 2])
    report = accuracy_report(pred, target, 3, train_counts=[500, 500, 10])  # class 1: no test sample
    assert np.isnan(report["per_class"][1])
    assert report["many"] == 50.0 and report["few"] == 100.0 and report["medium"] is None


def test_predict_runs_the_model_in_eval_mode_and_leaves_it_as_it_was():
    import torch

    from bench.train import predict

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5),
                                torch.nn.Linear(8, 3))
    model[1].running_mean.fill_(5.0)  # eval mode reads these: outputs differ from train mode's
    x, y = torch.randn(16, 4), torch.arange(16) % 3
    batches = [(x[:8], y[:8], None), (x[8:], y[8:], None)]
    expected = model.eval()(x).argmax(1).numpy()
    for training in (True, False):
        model.train(training)
        pred, target = predict(model, batches)
        assert model.training is training
        assert pred.tolist() == expected.tolist() and target.tolist() == y.tolist()
    assert model[1].running_mean.eq(5.0).all()  # no batch statistics updated


def test_lr_is_the_base_lr_times_lr_decay_per_milestone_passed():
    kw = dict(lr=0.2, warmup_epochs=0, milestones=(2, 4), lr_decay=0.5)  # lr != lr_decay: not symmetric
    assert [lr_at(e, **kw) for e in range(6)] == pytest.approx([0.2, 0.2, 0.1, 0.1, 0.05, 0.05])


def test_a_run_on_the_meta_set_too_is_scored_on_the_cells_shot_groups():
    """--train-on-meta adds 20 clean samples a class on fmnist-mini: its tail class (98 samples,
    medium-shot) would become many-shot, and the run would have no medium group to compare. The
    groups are the cell's, for every method on it."""
    import dataclasses

    import torch

    from bench.execute import load_data
    from bench.spec import RunSpec
    from methods.base import Run

    spec = RunSpec(method="ce", train_on_meta=True)
    data, plain = load_data(spec), load_data(dataclasses.replace(spec, train_on_meta=False))
    assert np.array_equal(data.train_counts, plain.train_counts + 20) and plain.train_counts.min() < 100
    assert np.array_equal(data.shot_counts, plain.train_counts)
    run = Run(spec=spec, data=data, device=torch.device("cpu"))
    report = run.evaluate(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10)))
    assert report["medium"] is not None and report["few"] is None
