"""bench/models.py against the official computations written out functionally (the Idelbayev
CIFAR ResNet used by MW-Net and CurveNet, notes/curvenet_mwnet.md §2.1; the xternalz WRN block;
the small CNN's docstring), and the two init schemes (§2.1). Float64, tiny batches: fast."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.models import build_model


def _randomise_batch_norms(model, seed=0):
    """Eval mode with non-trivial running statistics and affine parameters, so every BN, ReLU and
    shortcut placement shows in the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.3 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(1 + 0.3 * torch.randn(n, generator=g))
                m.bias.copy_(0.3 * torch.randn(n, generator=g))
    return model.eval()


def _bn(x, m):
    return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)


def _conv(x, m, stride):
    assert m.bias is None
    return F.conv2d(x, m.weight, None, stride, 1)


def resnet32_reference(model, x):
    """conv3x3(->16)-BN-ReLU; 3 stages x 5 blocks (16/32/64, strides 1/2/2, the stride in the
    block's first conv); block: conv-BN-ReLU-conv-BN, + option-A shortcut (x[:, :, ::2, ::2]
    zero-padded by planes//4 channels each side), ReLU; global average pool; linear."""
    out = F.relu(_bn(_conv(x, model.stem[0], 1), model.stem[1]))
    for stage, planes, stride in ((model.layer1, 16, 1), (model.layer2, 32, 2), (model.layer3, 64, 2)):
        assert len(stage) == 5
        for j, block in enumerate(stage):
            s = stride if j == 0 else 1
            o = F.relu(_bn(_conv(out, block.conv1, s), block.bn1))
            o = _bn(_conv(o, block.conv2, 1), block.bn2)
            if s != 1 or out.shape[1] != planes:
                shortcut = F.pad(out[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))
            else:
                shortcut = out
            out = F.relu(o + shortcut)
    return F.linear(out.mean((2, 3)), model.fc.weight, model.fc.bias)


def test_resnet32_forward_is_the_official_cifar_resnet():
    torch.manual_seed(0)
    model = _randomise_batch_norms(build_model("resnet32", 10).double())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert torch.allclose(model(x), resnet32_reference(model, x), rtol=1e-10, atol=1e-12)
    # the spatial sizes of the stages: 32, 16, 8 (strides 1 / 2 / 2, the stride in conv1)
    h = model.stem(x)
    for stage, shape in ((model.layer1, (16, 32, 32)), (model.layer2, (32, 16, 16)), (model.layer3, (64, 8, 8))):
        h = stage(h)
        assert h.shape[1:] == shape
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer2[0].conv2.stride == (1, 1)


def test_option_a_shortcut_subsamples_from_the_first_pixel_and_pads_both_sides():
    torch.manual_seed(0)
    model = build_model("resnet32", 10)
    x = torch.randn(2, 16, 8, 8)
    shortcut = model.layer2[0].shortcut
    out = shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()


def wrn_reference(model, x):
    """WRN (pre-activation): o = ReLU(BN(x)); conv3x3(o, stride); ReLU(BN); conv3x3; + (1x1
    conv of o where the shape changes, else x); final BN-ReLU, average pool, linear."""
    out = F.conv2d(x, model.stem.weight, None, 1, 1)
    for stage, stride in ((model.layer1, 1), (model.layer2, 2), (model.layer3, 2)):
        for j, block in enumerate(stage):
            s = stride if j == 0 else 1
            o = F.relu(_bn(out, block.bn1))
            y = _conv(o, block.conv1, s)
            y = _conv(F.relu(_bn(y, block.bn2)), block.conv2, 1)
            short = F.conv2d(o, block.shortcut.weight, None, s) if block.shortcut is not None else out
            out = y + short
    out = F.relu(_bn(out, model.head[0]))
    return F.linear(out.mean((2, 3)), model.fc.weight, model.fc.bias)


def test_wrn16_8_forward_is_the_pre_activation_wide_resnet():
    torch.manual_seed(0)
    model = _randomise_batch_norms(build_model("wrn16_8", 10).double())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [2, 2, 2]
    assert torch.allclose(model(x), wrn_reference(model, x), rtol=1e-10, atol=1e-12)


def test_small_cnn_is_four_conv_bn_relu_blocks_with_strides_2_1_2_1():
    torch.manual_seed(0)
    model = _randomise_batch_norms(build_model("small_cnn", 10, 1).double())
    assert sum(p.numel() for p in model.parameters()) == 61050  # "about 61 k"
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    h = x
    for block, stride, width in zip((model.stem, model.layer1, model.layer2, model.layer3), (2, 1, 2, 1),
                                    (16, 32, 64, 64)):
        h = F.relu(_bn(_conv(h, block[0], stride), block[1]))
        assert h.shape[1] == width
    assert h.shape[2:] == (7, 7)
    expected = F.linear(h.mean((2, 3)), model.fc.weight, model.fc.bias)
    assert torch.allclose(model(x), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,size", [("resnet32", 32), ("small_cnn", 28), ("wrn16_8", 8)])
def test_in_channels_reach_the_stem(name, size):
    for channels in (1, 3):
        model = build_model(name, 5, in_channels=channels)
        assert model(torch.zeros(2, channels, size, size)).shape == (2, 5)


def _std_ratio(weight, std):
    return float(weight.detach().std()) / std


def test_kaiming_init_is_the_mwnet_and_ldam_codes():
    """kaiming_normal_ (fan_in, ReLU gain) on conv and linear weights, BN weight 1 and bias 0,
    the linear bias left at PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    torch.manual_seed(0)
    model = build_model("resnet32", 10)
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.weight.numel() >= 2000:
            fan_in = m.weight[0].numel()
            assert abs(_std_ratio(m.weight, math.sqrt(2 / fan_in)) - 1) < 0.1, name
        elif isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any(), name
    assert abs(_std_ratio(model.fc.weight, math.sqrt(2 / 64)) - 1) < 0.15
    assert model.fc.bias.abs().max() <= 1 / 8 and model.fc.bias.abs().min() > 0


def test_curvenet_init_is_recognition_curves():
    """Conv weights N(0, 0.02), BN weights N(1, 0.02) and bias 0, linear weights Kaiming normal."""
    torch.manual_seed(0)
    model = build_model("resnet32", 10, init="curvenet")
    convs = torch.cat([m.weight.detach().flatten() for m in model.modules() if isinstance(m, nn.Conv2d)])
    assert abs(_std_ratio(convs, 0.02) - 1) < 0.05 and abs(float(convs.mean())) < 1e-3
    bn_w = torch.cat([m.weight.detach() for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    bn_b = torch.cat([m.bias.detach() for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(float(bn_w.mean()) - 1) < 0.005 and abs(_std_ratio(bn_w, 0.02) - 1) < 0.15
    assert not bn_b.any()
    assert abs(_std_ratio(model.fc.weight, math.sqrt(2 / 64)) - 1) < 0.15
