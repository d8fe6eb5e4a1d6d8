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
