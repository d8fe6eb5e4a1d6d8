"""The device-resident loader: epochs, determinism, normalisation, crops and flips."""

import numpy as np
import pytest
import torch

from bench.data import Loader, load_dataset
from bench.data.datasets import CIFAR_MEAN, CIFAR_STD
from bench.errors import DataError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make_loader(x, y, device="cpu", seed=0, **kwargs):
    c = x.shape[-1]
    options = dict(batch_size=10, device=device, mean=(0.5,) * c, std=(0.25,) * c,
                   augment=False, generator=torch.Generator().manual_seed(seed))
    options.update(kwargs)
    return Loader(x, y, **options)


def random_images(n, h=32, w=32, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w, c), dtype=np.uint8), rng.integers(0, 10, n)


def denormalise(xb, mean, std) -> np.ndarray:
    """(B, C, H, W) normalised float -> (B, H, W, C) uint8."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    x = ((xb.cpu() * s + m) * 255).round()
    assert (x - ((xb.cpu() * s + m) * 255)).abs().max() < 1e-3  # exact pixels came out
    return x.to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("device", DEVICES)
def test_epoch_visits_every_sample_once(device):
    x, y = random_images(103, 8, 8, 1)
    loader = make_loader(x, y, device)
    assert len(loader) == 11 and loader.num_samples == 103
    batches = list(loader)
    sizes = [len(b[2]) for b in batches]
    assert sizes == [10] * 10 + [3]
    idx = torch.cat([b[2] for b in batches]).cpu()
    assert sorted(idx.tolist()) == list(range(103)) and idx.tolist() != list(range(103))
    for xb, yb, ib in batches:
        assert xb.dtype == torch.float32 and yb.dtype == torch.int64 and ib.dtype == torch.int64
        assert xb.device.type == device and xb.shape[1:] == (1, 8, 8)
        assert torch.equal(yb.cpu(), torch.as_tensor(y)[ib.cpu()])
        expected = (torch.as_tensor(x)[ib.cpu()].permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
        assert torch.allclose(xb.cpu(), expected, atol=1e-6)
    second = torch.cat([b[2] for b in loader]).cpu()
    assert sorted(second.tolist()) == list(range(103)) and not torch.equal(idx, second)


def test_drop_last_and_no_shuffle():
    x, y = random_images(103, 4, 4, 3)
    loader = make_loader(x, y, drop_last=True)
    assert len(loader) == 10 and [len(b[2]) for b in loader] == [10] * 10
    ordered = make_loader(x, y, shuffle=False)
    assert torch.cat([b[2] for b in ordered]).tolist() == list(range(103))


def test_same_generator_seed_same_batches():
    x, y = random_images(64)
    runs = []
    for seed in (5, 5, 6):
        loader = make_loader(x, y, seed=seed, augment=True, mean=CIFAR_MEAN, std=CIFAR_STD)
        runs.append([b for _ in range(2) for b in loader])
    for (xa, ya, ia), (xb, yb, ib) in zip(runs[0], runs[1]):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
    assert not all(torch.equal(a[2], c[2]) for a, c in zip(runs[0], runs[2]))


def test_cycle_reshuffles_and_refuses_empty():
    x, y = random_images(25, 4, 4, 1)
    loader = make_loader(x, y)
    it = loader.cycle()
    epochs = [torch.cat([next(it)[2] for _ in range(3)]) for _ in range(3)]
    assert all(sorted(e.tolist()) == list(range(25)) for e in epochs)
    assert not torch.equal(epochs[0], epochs[1])
    empty = make_loader(x[:0], y[:0])
    assert len(empty) == 0 and list(empty) == []
    with pytest.raises(DataError, match="meta-per-class"):
        next(empty.cycle())


def test_accepts_tensors_and_rejects_bad_input():
    x, y = random_images(12, 4, 4, 1)
    a = [b[0] for b in make_loader(torch.as_tensor(x), torch.as_tensor(y))]
    b = [b[0] for b in make_loader(x, y)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    with pytest.raises(ValueError):
        make_loader(x.astype(np.float32), y)
    with pytest.raises(DataError, match="batch size"):
        make_loader(x, y, batch_size=0)
    with pytest.raises(ValueError):
        make_loader(x, y[:5])


def crop_candidates(img: np.ndarray) -> np.ndarray:
    """All 9 x 9 reflect-padded 32 x 32 crops of an (H, W, C) image, unflipped and flipped."""
    padded = np.pad(img, ((4, 4), (4, 4), (0, 0)), mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, img.shape[:2], axis=(0, 1))
    windows = windows.transpose(0, 1, 3, 4, 2)  # (9, 9, H, W, C)
    return np.stack([windows, windows[:, :, :, ::-1]])  # (2, 9, 9, H, W, C): flip after crop


@pytest.mark.parametrize("device", DEVICES)
def test_crops_and_flips_are_reflect_padded_crops(device):
    x, y = random_images(384, seed=1)
    loader = make_loader(x, y, device, batch_size=128, augment=True, mean=CIFAR_MEAN,
                         std=CIFAR_STD)
    flips, offsets = [], []
    for xb, _, ib in loader:
        out = denormalise(xb, CIFAR_MEAN, CIFAR_STD)
        for img, i in zip(out, ib.cpu().tolist()):
            match = np.argwhere(np.all(crop_candidates(x[i]) == img, axis=(3, 4, 5)))
            assert len(match) == 1, "each output is exactly one crop (random images)"
            flip, dy, dx = match[0]
            flips.append(flip)
            offsets += [dy, dx]
    assert 0.4 < np.mean(flips) < 0.6
    assert set(offsets) == set(range(9))  # offsets 0..8: all crops, including the borders
    assert 3.5 < np.mean(offsets) < 4.5


def test_a_sample_alone_in_the_last_batch_is_augmented_like_any_other():
    """The training transform (MW-Net.py L79-101, feeder.py L88-105) crops and flips every image
    on its own, so the one sample of a last short batch (a pool of 129 at batch 128) is too."""
    x, y = random_images(9, seed=4)
    loader = make_loader(x, y, batch_size=8, augment=True, mean=CIFAR_MEAN, std=CIFAR_STD)
    seen = set()
    for _ in range(12):
        *_, (xb, _, ib) = loader
        assert len(ib) == 1
        img = denormalise(xb, CIFAR_MEAN, CIFAR_STD)[0]
        match = np.argwhere(np.all(crop_candidates(x[int(ib)]) == img, axis=(3, 4, 5)))
        assert len(match) == 1
        seen.add(tuple(match[0]))
    assert len(seen) > 1 and any(m != (0, 4, 4) for m in seen)  # not always the unaugmented image


def test_augmentation_on_cifar_images_and_none_at_test_time(cifar10_npz):
    with np.load(cifar10_npz) as z:
        x, y = z["x_test"][:128], z["y_test"][:128]
    aug = make_loader(x, y, batch_size=64, augment=True, mean=CIFAR_MEAN, std=CIFAR_STD)
    for xb, _, ib in aug:
        out = denormalise(xb, CIFAR_MEAN, CIFAR_STD)
        for img, i in zip(out, ib.tolist()):
            assert np.all(crop_candidates(x[i]) == img, axis=(3, 4, 5)).any()
    plain = make_loader(x, y, batch_size=64, augment=False, shuffle=False, mean=CIFAR_MEAN,
                        std=CIFAR_STD)
    out = np.concatenate([denormalise(b[0], CIFAR_MEAN, CIFAR_STD) for b in plain])
    assert np.array_equal(out, x)


def test_fmnist_mini_batches():
    ds = load_dataset("fmnist-mini")
    loader = Loader(ds.x_test, ds.y_test, batch_size=256, device="cpu", mean=ds.mean,
                    std=ds.std, augment=ds.augment, shuffle=False)
    xb, yb, ib = next(iter(loader))
    assert xb.shape == (256, 1, 28, 28) and torch.equal(yb, torch.as_tensor(ds.y_test[:256]))
    assert np.array_equal(denormalise(xb, ds.mean, ds.std), ds.x_test[:256])
    assert abs(float(torch.cat([b[0] for b in loader]).mean())) < 0.05


def test_a_plan_is_reflect_pad_crop_at_dy_dx_then_flip():
    """A given plan (offsets (dy, dx), flip) is exactly torchvision's RandomCrop(padding 4,
    reflect) at that offset followed by the flip: a captured step replays plans, so the meaning of
    each field matters, not only the distribution of the outputs."""
    x, y = random_images(4, 9, 11, 2, seed=3)  # H != W, dy != dx: swaps show
    loader = make_loader(x, y, augment=True, mean=(0.0, 0.0), std=(1 / 255, 1 / 255))
    offsets = torch.tensor([[0, 8], [7, 2], [3, 5], [8, 0]])
    flip = torch.tensor([False, True, True, False])
    idx = torch.tensor([2, 0, 3, 1])
    xb, yb, ib = loader.assemble(idx, offsets, flip)
    assert torch.equal(ib, idx) and yb.tolist() == y[[2, 0, 3, 1]].tolist()
    for k, i in enumerate(idx.tolist()):
        dy, dx = offsets[k].tolist()
        padded = np.pad(x[i], ((4, 4), (4, 4), (0, 0)), mode="reflect")
        crop = padded[dy:dy + 9, dx:dx + 11]
        expected = crop[:, ::-1] if flip[k] else crop
        assert np.array_equal(xb[k].round().to(torch.uint8).permute(1, 2, 0).numpy(), expected), k


def test_cycle_respects_drop_last_and_resumes_mid_pass():
    x, y = random_images(25, 5, 5, 1)
    short = make_loader(x, y, drop_last=True).cycle()  # 2 full batches a pass, never the 5 left over
    passes = [[next(short)[2] for _ in range(2)] for _ in range(3)]
    assert all(len(b) == 10 for p in passes for b in p)
    assert all(len(set(torch.cat(p).tolist())) == 20 for p in passes)
    a = make_loader(x, y, batch_size=5, seed=4).cycle()
    [next(a) for _ in range(2)]
    state = a.state_dict()
    rest = [next(a)[2] for _ in range(3)]
    b = make_loader(x, y, batch_size=5, seed=9).cycle()  # another generator: the order comes from state
    b.load_state_dict(state)
    assert all(torch.equal(u, next(b)[2]) for u in rest)
