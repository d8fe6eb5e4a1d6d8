"""Datasets: the embedded default, the real files, checksums, npz validation, data dirs."""

import gzip
import hashlib
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from bench.data import DATASET_NAMES, datasets, default_data_dir, load_dataset, resolve_data_dir
from bench.errors import DataError

FASHION_FILES = tuple(datasets.FASHION_MD5)


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


# ---------------------------------------------------------------------------------------------
# names and data directories


def test_unknown_dataset_lists_choices():
    with pytest.raises(DataError) as e:
        load_dataset("cifar-11")
    msg = one_line(e)
    assert all(n in msg for n in DATASET_NAMES) and "npz:PATH" in msg


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_data_dir() == tmp_path / "cache" / "reweight-bench" / "data"
    assert resolve_data_dir() == default_data_dir()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / ".cache" / "reweight-bench" / "data"
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_data_dir("~/x") == tmp_path / "x"


# ---------------------------------------------------------------------------------------------
# fmnist-mini (embedded)


def test_fmnist_mini_is_balanced_and_checked():
    ds = load_dataset("fmnist-mini")
    assert ds.x_train.shape == (10000, 28, 28, 1) and ds.x_test.shape == (2000, 28, 28, 1)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert np.bincount(ds.y_train).tolist() == [1000] * 10
    assert np.bincount(ds.y_test).tolist() == [200] * 10
    assert ds.classes[0] == "T-shirt/top" and ds.num_classes == 10 and not ds.augment
    assert ds.mean == (0.2860,) and ds.std == (0.3530,)
    blob = datasets.FMNIST_MINI_PATH.read_bytes()
    assert hashlib.sha256(blob).hexdigest() == datasets.FMNIST_MINI_SHA256
    assert len(blob) <= 6_000_000
    assert datasets.FMNIST_MINI_PATH.name.endswith(".npz.xz")  # matches package-data data/*.npz*
    licence = (datasets.FMNIST_MINI_PATH.parent / "FMNIST_MINI_LICENSE.txt").read_text()
    assert "MIT" in licence and "Copyright (c) 2017 Zalando SE" in licence


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_fmnist_mini_corrupt(tmp_path, damage):
    blob = bytearray(datasets.FMNIST_MINI_PATH.read_bytes())
    if damage == "flip":
        blob[len(blob) // 2] ^= 0xFF
    else:
        blob = blob[: len(blob) // 3]
    bad = tmp_path / "fmnist_mini.npz.xz"
    bad.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="corrupt"):
        datasets.load_fmnist_mini(bad)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST idx files


@pytest.fixture(scope="module")
def fashion_dir(shared_data) -> Path:
    path = shared_data / "fashion-mnist"
    if not all((path / (n + ".gz")).is_file() for n in FASHION_FILES):
        pytest.skip("Fashion-MNIST idx files not found")
    return path


@pytest.fixture(scope="module")
def fashion_full(fashion_dir):
    return load_dataset("fashion-mnist", fashion_dir.parent)  # DATA_DIR/fashion-mnist/*.gz


def test_fashion_mnist_real_files(fashion_full):
    ds = fashion_full
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.y_train.dtype == np.int64 and not ds.augment
    # the files' first labels (an ankle boot, two T-shirts, a dress ...): labels read in the files'
    # order, not only in the right numbers
    assert ds.y_train[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert ds.y_test[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    (mean,), (std,) = datasets._channel_stats(ds.x_train)  # exact, from a histogram
    assert abs(mean - ds.mean[0]) < 1e-4 and abs(std - ds.std[0]) < 1e-4


def test_fashion_mnist_download_fetches_the_release_files_and_checks_them(fashion_dir, fashion_full, tmp_path,
                                                                        monkeypatch):
    """``--download`` fetches the four .gz files from the release's address into DATA_DIR/
    fashion-mnist, checks each against its md5, and loads them. The md5 table and address are
    torchvision's; the shared copies are recompressed (same idx content, other .gz bytes), so
    here the check is against theirs."""
    from torchvision.datasets import FashionMNIST

    assert datasets.FASHION_URL in FashionMNIST.mirrors
    assert {n + ".gz": md5 for n, md5 in datasets.FASHION_GZ_MD5.items()} == dict(FashionMNIST.resources)
    for n in datasets.FASHION_GZ_MD5:
        monkeypatch.setitem(datasets.FASHION_GZ_MD5, n, hashlib.md5((fashion_dir / (n + ".gz")).read_bytes())
                            .hexdigest())
    fetched = []

    def fetch(url, path):  # the network, served from the real release files
        assert url.startswith(datasets.FASHION_URL)
        fetched.append(url.removeprefix(datasets.FASHION_URL))
        path.write_bytes((fashion_dir / fetched[-1]).read_bytes())

    monkeypatch.setattr(datasets, "_fetch", fetch)
    ds = datasets.load_fashion_mnist(tmp_path, download=True)
    assert sorted(fetched) == sorted(n + ".gz" for n in datasets.FASHION_MD5)
    assert sorted(p.name for p in (tmp_path / "fashion-mnist").iterdir()) == sorted(fetched)
    assert np.array_equal(ds.y_train, fashion_full.y_train) and np.array_equal(ds.x_test, fashion_full.x_test)


def test_fmnist_mini_is_the_first_images_of_each_class(fashion_full):
    full = fashion_full
    mini = load_dataset("fmnist-mini")
    for split, per_class in (("train", 1000), ("test", 200)):
        y = getattr(full, f"y_{split}")
        rows = np.sort(np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(10)]))
        assert np.array_equal(getattr(mini, f"x_{split}"), getattr(full, f"x_{split}")[rows])
        assert np.array_equal(getattr(mini, f"y_{split}"), y[rows])


def _fashion_copy(fashion_dir: Path, dest: Path, plain=(), damage=None) -> Path:
    """dest/fashion-mnist with the real files, some uncompressed, one optionally damaged."""
    folder = dest / "fashion-mnist"
    folder.mkdir(parents=True)
    for n in FASHION_FILES:
        if n in plain:
            (folder / n).write_bytes(gzip.decompress((fashion_dir / (n + ".gz")).read_bytes()))
        else:
            (folder / (n + ".gz")).symlink_to(fashion_dir / (n + ".gz"))
    if damage:
        name, how = damage
        path = folder / name if name in plain else folder / (name + ".gz")
        blob = bytearray(path.read_bytes())
        path.unlink()
        if how == "truncate":
            blob = blob[: len(blob) // 2]
        else:
            blob[-1] ^= 0x01
        path.write_bytes(bytes(blob))
    return dest


def test_fashion_mnist_uncompressed_and_torchvision_layout(fashion_dir, fashion_full, tmp_path):
    ref = fashion_full
    plain = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    root = _fashion_copy(fashion_dir, tmp_path / "a", plain=plain)
    ds = load_dataset("fashion-mnist", root)
    assert np.array_equal(ds.x_test, ref.x_test) and np.array_equal(ds.y_train, ref.y_train)
    raw = tmp_path / "b" / "FashionMNIST" / "raw"  # torchvision's layout
    raw.parent.mkdir(parents=True)
    (root / "fashion-mnist").rename(raw)
    assert np.array_equal(load_dataset("fashion-mnist", tmp_path / "b").y_test, ref.y_test)


@pytest.mark.parametrize("plain,damage,match", [
    ((), ("t10k-labels-idx1-ubyte", "truncate"), "truncated"),
    (("t10k-labels-idx1-ubyte",), ("t10k-labels-idx1-ubyte", "flip"), "wrong checksum"),
    (("t10k-labels-idx1-ubyte",), ("t10k-labels-idx1-ubyte", "truncate"), "wrong checksum"),
])
def test_fashion_mnist_corrupt(fashion_dir, tmp_path, plain, damage, match):
    root = _fashion_copy(fashion_dir, tmp_path, plain=plain, damage=damage)
    with pytest.raises(DataError, match=match) as e:
        load_dataset("fashion-mnist", root)
    assert "t10k-labels-idx1-ubyte" in one_line(e)


def test_fashion_mnist_missing_names_files_checksums_and_remedy(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", tmp_path)
    msg = one_line(e)
    for name, md5 in datasets.FASHION_MD5.items():
        assert name in msg and md5 in msg
    assert "--download" in msg and str(tmp_path) in msg
    for folder in datasets._fashion_dirs(tmp_path):  # every folder it looked in
        assert str(folder) in msg
    assert_suggested_command_downloads(msg, "fashion-mnist", tmp_path)


def assert_suggested_command_downloads(msg: str, name: str, data_dir) -> None:
    """The remedy is a command of this CLI that fetches ``name`` into ``data_dir`` (``bench run``
    has no --download; ``bench data`` has)."""
    from bench.cli import make_parser

    command = msg.split("`")[1].split()
    assert command[:3] == ["python", "-m", "bench"]
    args = make_parser().parse_args(command[3:])
    assert (args.command, args.dataset, args.data_dir, args.download) == ("data", name, str(data_dir), True)


# ---------------------------------------------------------------------------------------------
# CIFAR in torchvision's layout, on small files written exactly like the originals


def write_cifar(root: Path, name: str, n: int, rng, archive=False) -> tuple[dict, dict]:
    """Small pickled batches in torchvision's layout; returns (md5 table, expected arrays)."""
    src = datasets.CIFAR[name]
    K = 10 if name == "cifar10" else 100
    folder = root / src.folder
    folder.mkdir(parents=True)
    md5, xs, ys = {}, {"train": [], "test": []}, {"train": [], "test": []}
    for i, fname in enumerate(src.train + src.test):
        split = "train" if fname in src.train else "test"
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in (np.arange(n) + i) % K]
        entry = {"batch_label": f"batch {i + 1}", src.label_key: labels, "data": data,
                 "filenames": [f"img_{i}_{j}.png" for j in range(n)]}
        if name == "cifar100":
            entry["coarse_labels"] = [v // 5 for v in labels]
        raw = pickle.dumps(entry, protocol=2)
        (folder / fname).write_bytes(raw)
        md5[fname] = hashlib.md5(raw).hexdigest()
        xs[split].append(data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1))
        ys[split].append(np.array(labels))
    if name == "cifar10":
        meta = {"label_names": [f"c{k}" for k in range(K)], "num_cases_per_batch": n,
                "num_vis": 3072}
    else:
        meta = {"fine_label_names": [f"c{k}" for k in range(K)],
                "coarse_label_names": [f"s{k}" for k in range(20)]}
    raw = pickle.dumps(meta, protocol=2)
    (folder / src.meta).write_bytes(raw)
    md5[src.meta] = hashlib.md5(raw).hexdigest()
    if archive:
        with tarfile.open(root / src.archive, "w:gz") as tar:
            tar.add(folder, arcname=src.folder)
        shutil.rmtree(folder)
        md5[src.archive] = hashlib.md5((root / src.archive).read_bytes()).hexdigest()
    expected = {k: np.concatenate(v) for k, v in xs.items()}
    expected.update({f"y_{k}": np.concatenate(v) for k, v in ys.items()})
    return md5, expected


def patch_md5(monkeypatch, name, md5):
    for fname, value in md5.items():
        monkeypatch.setitem(datasets.CIFAR[name].md5, fname, value)


@pytest.mark.parametrize("name,n", [("cifar10", 7), ("cifar100", 120)])
@pytest.mark.parametrize("archive", [False, True])
def test_cifar_torchvision_layout(tmp_path, monkeypatch, name, n, archive):
    rng = np.random.default_rng(0)
    md5, expected = write_cifar(tmp_path, name, n, rng, archive=archive)
    with pytest.raises(DataError, match="wrong checksum"):  # the real md5 table rejects them
        load_dataset(name, tmp_path)
    patch_md5(monkeypatch, name, md5)
    ds = load_dataset(name, tmp_path)
    n_train = n * len(datasets.CIFAR[name].train)
    assert ds.x_train.shape == (n_train, 32, 32, 3) and ds.x_test.shape == (n, 32, 32, 3)
    assert np.array_equal(ds.x_train, expected["train"]) and np.array_equal(ds.x_test, expected["test"])
    assert np.array_equal(ds.y_train, expected["y_train"]) and ds.y_train.dtype == np.int64
    assert np.array_equal(ds.y_test, expected["y_test"]) and ds.y_test.dtype == np.int64
    assert ds.num_classes == (10 if name == "cifar10" else 100) and ds.classes[3] == "c3"
    assert ds.augment and ds.mean == datasets.CIFAR_MEAN and ds.std == datasets.CIFAR_STD
    assert np.allclose(np.array(ds.mean) * 255, (125.3, 123.0, 113.9))
    assert np.allclose(np.array(ds.std) * 255, (63.0, 62.1, 66.7))  # PROTOCOL.md §1


def test_cifar_missing_names_files_checksums_and_remedy(tmp_path):
    for name, src in datasets.CIFAR.items():
        with pytest.raises(DataError) as e:
            load_dataset(name, tmp_path)
        msg = one_line(e)
        assert src.archive in msg and src.folder in msg and "--download" in msg
        assert_suggested_command_downloads(msg, name, tmp_path)
        assert all(f in msg and md5 in msg for f, md5 in src.md5.items())


def test_cifar_partial_folder_names_missing_file(tmp_path, monkeypatch):
    md5, _ = write_cifar(tmp_path, "cifar10", 5, np.random.default_rng(1))
    patch_md5(monkeypatch, "cifar10", md5)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataError, match="lacks test_batch"):
        load_dataset("cifar10", tmp_path)


def test_cifar_truncated_files(tmp_path, monkeypatch):
    md5, _ = write_cifar(tmp_path / "a", "cifar10", 5, np.random.default_rng(2), archive=True)
    patch_md5(monkeypatch, "cifar10", md5)
    archive = tmp_path / "a" / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[:-100])
    with pytest.raises(DataError, match="wrong checksum.*truncated"):
        load_dataset("cifar10", tmp_path / "a")
    # a truncated batch whose md5 has been (wrongly) accepted still fails cleanly
    md5, _ = write_cifar(tmp_path / "b", "cifar10", 5, np.random.default_rng(2))
    batch = tmp_path / "b" / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    md5["data_batch_3"] = hashlib.md5(batch.read_bytes()).hexdigest()
    patch_md5(monkeypatch, "cifar10", md5)
    with pytest.raises(DataError, match="data_batch_3 cannot be read"):
        load_dataset("cifar10", tmp_path / "b")


def test_cifar_unpickler_refuses_foreign_globals(tmp_path, monkeypatch):
    md5, _ = write_cifar(tmp_path, "cifar10", 5, np.random.default_rng(3))
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(pickle.dumps({"data": shutil.rmtree}, protocol=2))
    md5["data_batch_1"] = hashlib.md5(batch.read_bytes()).hexdigest()
    patch_md5(monkeypatch, "cifar10", md5)
    with pytest.raises(DataError, match="refusing to load global shutil.rmtree"):
        load_dataset("cifar10", tmp_path)


def test_download_writes_temp_then_renames(tmp_path, monkeypatch):
    payload = b"archive bytes"
    seen = []

    def fake_fetch(url, path):
        seen.append(path)
        path.write_bytes(payload)

    monkeypatch.setattr(datasets, "_fetch", fake_fetch)
    dest = tmp_path / "sub" / "file.tar.gz"
    datasets.download_file("https://example.invalid/f", dest, hashlib.md5(payload).hexdigest())
    assert dest.read_bytes() == payload and seen[0] != dest and not seen[0].exists()
    with pytest.raises(DataError, match="md5"):
        datasets.download_file("https://example.invalid/f", tmp_path / "other", "0" * 32)
    assert not (tmp_path / "other").exists() and list(tmp_path.glob(".other*")) == []

    def offline(url, path):
        raise OSError("network unreachable")

    monkeypatch.setattr(datasets, "_fetch", offline)
    with pytest.raises(DataError, match="could not download"):
        load_dataset("cifar10", tmp_path / "empty", download=True)


def test_a_corrupt_download_through_torchvision_says_its_md5(tmp_path, monkeypatch):
    """torchvision's downloader, given an md5, answers a corrupt file with only 'File not found or
    corrupted.'; _fetch gives it none, so download_file's own check names both checksums."""
    import torchvision.datasets.utils as tv_utils

    def download_url(url, root, filename=None, md5=None):  # torchvision's check, as 0.29 does it
        path = Path(root) / filename
        path.write_bytes(b"a truncated archive")
        if md5 is not None and hashlib.md5(path.read_bytes()).hexdigest() != md5:
            raise RuntimeError("File not found or corrupted.")

    monkeypatch.setattr(tv_utils, "download_url", download_url)
    got = hashlib.md5(b"a truncated archive").hexdigest()
    with pytest.raises(DataError, match=f"has md5 {got}, expected {'0' * 32}; try again later"):
        datasets.download_file("https://example.invalid/f.tar.gz", tmp_path / "f.tar.gz", "0" * 32)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# npz: bring your own data


def test_npz_cifar10_from_jpeg(cifar10_npz):
    ds = load_dataset(f"npz:{cifar10_npz}")
    assert ds.name == f"npz:{cifar10_npz}"
    assert ds.x_train.shape == (50000, 32, 32, 3) and ds.x_test.shape == (10000, 32, 32, 3)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert np.bincount(ds.y_train).tolist() == [5000] * 10
    assert ds.classes[0] == "airplane" and ds.num_classes == 10 and ds.augment
    # statistics computed from x_train land near the CIFAR constants of the papers
    assert np.allclose(ds.mean, datasets.CIFAR_MEAN, atol=0.01)
    assert np.allclose(ds.std, datasets.CIFAR_STD, atol=0.01)


def good_arrays(rng, k=3, shape=(8, 8)):
    return dict(x_train=rng.integers(0, 256, (30, *shape), dtype=np.uint8),
                y_train=np.arange(30) % k,
                x_test=rng.integers(0, 256, (6, *shape), dtype=np.uint8),
                y_test=np.arange(6) % k)


def test_npz_grayscale_relative_path_and_options(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    arrays = good_arrays(rng)
    np.savez(tmp_path / "mine.npz", **arrays, y_test_extra=np.zeros(3))
    monkeypatch.chdir(tmp_path.parent)
    ds = load_dataset("npz:mine.npz", data_dir=tmp_path)  # not in cwd: found in the data dir
    assert ds.x_train.shape == (30, 8, 8, 1) and not ds.augment
    assert ds.classes == ["0", "1", "2"]
    assert np.isclose(ds.mean[0], arrays["x_train"].mean() / 255)
    assert np.isclose(ds.std[0], (arrays["x_train"] / 255).std())
    np.savez(tmp_path / "named.npz", **arrays, classes=np.array(["a", "b", "c"]),
             mean=np.array([0.5]), std=np.array([0.25]))
    ds = load_dataset(f"npz:{tmp_path / 'named.npz'}")
    assert ds.classes == ["a", "b", "c"] and ds.num_classes == 3
    assert ds.mean == (0.5,) and ds.std == (0.25,)


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 1), (8, 8, 3), (8, 8, 4), (3, 8, 3), (1, 8, 4),
                                   (3, 8), (1, 8)])
def test_npz_channels_last_shapes_load(tmp_path, shape):
    # only N x {1, 3} x H x W with W > 4 is taken for channels-first; N x H x W always loads
    np.savez(tmp_path / "d.npz", **good_arrays(np.random.default_rng(0), shape=shape))
    ds = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert ds.x_train.shape == (30, *shape[:2], shape[2] if len(shape) == 3 else 1)


@pytest.mark.parametrize("shape,augment", [((32, 32, 3), True), ((32, 32), False), ((32, 32, 1), False),
                                           ((32, 32, 4), False), ((28, 28, 3), False), ((32, 28, 3), False)])
def test_npz_is_augmented_only_when_cifar_like(tmp_path, shape, augment):
    """The random crop (reflect-pad 4) and flip are the CIFAR transform (PROTOCOL.md §1
    "Transforms"): on for 32 x 32 x 3 images only (load_npz's docstring), off for grayscale or
    other sizes."""
    np.savez(tmp_path / "d.npz", **good_arrays(np.random.default_rng(0), shape=shape))
    assert load_dataset(f"npz:{tmp_path / 'd.npz'}").augment is augment


def test_npz_constant_channel_is_not_divided_by_a_zero_std(tmp_path):
    """Computed normalisation ``(x / 255 - mean) / std``: a channel with one value everywhere has
    std 0 and is given std 1, so its batches stay finite."""
    from bench.data import Loader

    arrays = good_arrays(np.random.default_rng(0), shape=(8, 8, 2))
    arrays["x_train"][..., 1] = 9
    np.savez(tmp_path / "d.npz", **arrays)
    ds = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert ds.std[1] == 1.0 and np.isclose(ds.mean[1], 9 / 255) and 0 < ds.std[0] < 1
    xb, _, _ = next(iter(Loader(ds.x_train, ds.y_train, batch_size=30, device="cpu", mean=ds.mean, std=ds.std,
                                augment=False)))
    assert np.isfinite(xb.numpy()).all() and np.allclose(xb[:, 1].numpy(), 0, atol=1e-6)


def test_npz_mean_std_at_the_edges_of_their_range(tmp_path):
    np.savez(tmp_path / "d.npz", **good_arrays(np.random.default_rng(0), shape=(8, 8, 2)),
             mean=np.array([0.0, 1.0]), std=np.array([1.0, 1e-3]))
    ds = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert ds.mean == (0.0, 1.0) and ds.std == (1.0, 1e-3)


def test_npz_class_without_training_samples(tmp_path):
    arrays = good_arrays(np.random.default_rng(0))
    np.savez(tmp_path / "d.npz", **arrays, classes=np.array(["a", "b", "c", "d"]))
    with pytest.raises(DataError, match="class 3 has no training samples"):
        load_dataset(f"npz:{tmp_path / 'd.npz'}")


def _malformed(rng):
    g = good_arrays(rng)
    drop = {k: v for k, v in g.items() if k != "y_test"}
    return {
        "missing key": (drop, "missing key"),
        "float images": ({**g, "x_train": g["x_train"].astype(np.float32)}, "uint8"),
        "2-D images": ({**g, "x_train": g["x_train"][:, :, 0]}, "uint8"),
        "float labels": ({**g, "y_train": g["y_train"].astype(float)}, "integer labels"),
        "label count": ({**g, "y_train": g["y_train"][:-1]}, "one per image"),
        "negative label": ({**g, "y_test": g["y_test"] - 1}, "outside 0..2"),
        "label >= K": ({**g, "classes": np.array(["a", "b"])}, "outside 0..1"),
        "shapes differ": ({**g, "x_test": g["x_test"][:, :4]}, "share H x W x C"),
        "object classes": ({**g, "classes": np.array(["a", 1, None], dtype=object)}, "plain arrays"),
        "mean only": ({**g, "mean": np.array([0.5])}, "both mean and std"),
        "one class": ({**g, "y_train": g["y_train"] * 0, "y_test": g["y_test"] * 0}, "2 classes"),
        "empty train": ({**g, "x_train": g["x_train"][:0], "y_train": g["y_train"][:0]},
                        "x_train is empty"),
        "empty test": ({**g, "x_test": g["x_test"][:0], "y_test": g["y_test"][:0]},
                       "x_test is empty"),
        "std inf": ({**g, "mean": np.array([0.5]), "std": np.array([np.inf])},
                    r"std must be finite, got std=\[inf\]"),
        "std nan": ({**g, "mean": np.array([0.5]), "std": np.array([np.nan])},
                    r"std must be finite, got std=\[nan\]"),
        "mean nan": ({**g, "mean": np.array([np.nan]), "std": np.array([0.25])},
                     r"mean must be finite, got mean=\[nan\]"),
        "0-255 mean, std": ({**g, "mean": np.array([127.0]), "std": np.array([60.0])},
                            r"mean and std are in \[0, 1\] units of the image scaled from 0-255"),
        "negative mean": ({**g, "mean": np.array([-0.1]), "std": np.array([0.25])}, r"\[0, 1\] units"),
        "std above 1": ({**g, "mean": np.array([0.5]), "std": np.array([1.5])}, r"\[0, 1\] units"),
        "channels first": ({**g, "x_train": np.zeros((30, 3, 8, 8), np.uint8),
                            "x_test": np.zeros((6, 3, 8, 8), np.uint8)},
                           r"x_train with shape \(30, 3, 8, 8\) looks channels-first"),
        "grey channels first": ({**g, "x_test": np.zeros((6, 1, 8, 8), np.uint8)},
                                r"x_test .* looks channels-first .*np\.transpose\(x, \(0, 2, 3, 1\)\)"),
        "noisy labels short": ({**g, "y_train_noisy": g["y_train"][:-1]},
                               r"y_train_noisy must be 1-D integer labels, one per training image"),
        "noisy labels float": ({**g, "y_train_noisy": g["y_train"].astype(float)}, "y_train_noisy must be 1-D"),
        "noisy label >= K": ({**g, "y_train_noisy": g["y_train"] + 1}, r"y_train_noisy has labels outside 0..2"),
        "mean strings": ({**g, "mean": np.array(["a"]), "std": np.array([0.25])}, "mean and std must be numbers"),
        "huge label": ({**g, "y_train": np.where(np.arange(len(g["y_train"])) == 0, 10 ** 9, g["y_train"])},
                       r"have no training samples.*0\.\.1000000000; is label 1000000000 a stray\?"),
    }


@pytest.mark.parametrize("case", list(_malformed(np.random.default_rng(0))))
def test_npz_malformed(tmp_path, case):
    arrays, match = _malformed(np.random.default_rng(0))[case]
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=match) as e:
        load_dataset(f"npz:{path}")
    assert str(path) in one_line(e)


def test_a_download_into_a_data_dir_that_cannot_be_made_is_one_line(tmp_path):
    """--data-dir a file, or under one: a DataError naming it before any connection is tried."""
    from bench.data.datasets import download_file

    (tmp_path / "afile").write_text("x")
    for where in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        with pytest.raises(DataError, match="give --data-dir a folder you can write to") as e:
            download_file("https://example.invalid/x.tar.gz", where / "x.tar.gz", "0" * 32)
        assert str(where) in one_line(e)


@pytest.mark.parametrize("damage", ["missing", "not a zip", "truncated", "a directory"])
def test_npz_unreadable(tmp_path, damage):
    path = tmp_path / "bad.npz"
    if damage == "a directory":
        path.mkdir()
    if damage == "not a zip":
        path.write_bytes(b"hello")
    elif damage == "truncated":
        np.savez(path, **good_arrays(np.random.default_rng(0)))
        path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError) as e:
        load_dataset(f"npz:{path}")
    one_line(e)
    if damage == "not a zip":  # a text file passed as npz: said so, not numpy's pickle message
        assert "is not an .npz archive" in str(e.value)
    if damage == "a directory":
        assert "bad.npz is a directory, not an .npz file" in str(e.value)


def test_npz_stray_label_is_named_when_the_classes_are_inferred(tmp_path):
    arrays = good_arrays(np.random.default_rng(0))
    arrays["y_train"] = arrays["y_train"].copy()
    arrays["y_train"][5] = 42  # one stray label among 0..2: K inferred as 43
    np.savez(tmp_path / "stray.npz", **arrays)
    with pytest.raises(DataError, match=r"classes 3, 4, 5, 6, 7 \.\.\. have no training samples.*"
                                        r"0\.\.42; is label 42 a stray\?"):
        load_dataset(f"npz:{tmp_path / 'stray.npz'}")
    # K = max label + 1 over y_train and y_test: a stray test label is named as a stray too
    arrays = good_arrays(np.random.default_rng(0))
    arrays["y_test"] = arrays["y_test"].copy()
    arrays["y_test"][0] = 5
    np.savez(tmp_path / "stray_test.npz", **arrays)
    with pytest.raises(DataError, match=r"classes 3, 4, 5 have no training samples.*0\.\.5; is label 5 a stray\?"):
        load_dataset(f"npz:{tmp_path / 'stray_test.npz'}")
