"""Datasets: uint8 images and int64 labels, train and test, read from a data directory.

Every loader returns a :class:`Dataset` with images as uint8 ``(N, H, W, C)`` (grayscale has
C = 1) and labels as int64, in the files' original order. Sources:

``fmnist-mini`` (the default, embedded, offline)
    A deterministic, class-balanced subset of the real Fashion-MNIST shipped in this package
    (``fmnist_mini.npz.xz``, made by ``scripts/make_fmnist_mini.py``): the first 1,000 training
    and the first 200 test images of each class, in the original file order. Why this size:
    10,000 training images keep a quick run within about a minute on 2 CPU cores, and after the
    default 20-per-class meta split n_max = 980, so imbalance 50 leaves a tail of 19 samples
    (int(980 / 50) = 19): the many / medium / few-shot groups (> 100, 20-100, < 20 training
    samples) are all populated. 200 test images per class give a per-class accuracy with a
    standard error of at most 3.5 points. The file's sha256 is recorded below and checked on
    every load. Licence: MIT, Copyright (c) 2017 Zalando SE (``FMNIST_MINI_LICENSE.txt``).
``fashion-mnist``
    The original idx files (``train-images-idx3-ubyte`` ...), gzipped or not, in
    ``DATA_DIR/fashion-mnist/``, torchvision's ``DATA_DIR/FashionMNIST/raw/`` or ``DATA_DIR``. The md5 of the
    *uncompressed* content is checked (gzip headers differ between mirrors; see
    ``shared/data/README.md``).
``cifar10``, ``cifar100``
    torchvision's layout: ``DATA_DIR/cifar-10-batches-py/`` (``cifar-100-python/``) or the
    ``.tar.gz`` archive beside it (read in place, not extracted). The md5 table is torchvision's
    (``torchvision/datasets/cifar.py``); every file is checked before it is unpickled, and the
    unpickler only admits numpy arrays. ``--download`` fetches the archive with torchvision's
    md5-checked downloader (urllib if torchvision is absent) into a temporary file, checks it and
    renames it into place.
``npz:PATH``
    Bring your own data: see :func:`load_npz`.

Normalisation (PROTOCOL.md §1 "Transforms"; MW-Net.py L79-101 and CurveNet feeder.py L88-105
use the same constants for CIFAR-10 and CIFAR-100): mean (125.3, 123.0, 113.9)/255, std
(63.0, 62.1, 66.7)/255. Fashion-MNIST: mean 0.2860, std 0.3530, computed once over the 60,000
original training images; fmnist-mini uses the same constants (its own are 0.2867 / 0.3540).

Augmentation (``Dataset.augment``, applied by ``bench.data.loader``): the CIFAR transforms of
PROTOCOL.md §1 (4-pixel reflect padding, random 32 x 32 crop, horizontal flip) on ``cifar10``,
``cifar100`` and 32 x 32 x 3 ``npz`` images; none on ``fmnist-mini``, ``fashion-mnist`` and other
``npz`` shapes (§1's transforms are CIFAR's; the papers train no grayscale data).

The data directory (:func:`resolve_data_dir`): the explicit argument (``--data-dir``), else the
environment variable ``BENCH_DATA_DIR``, else :func:`default_data_dir`
(``$XDG_CACHE_HOME/reweight-bench/data``, i.e. ``~/.cache/reweight-bench/data`` by default).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import lzma
import math
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.errors import DataError

DATASET_NAMES = ("fmnist-mini", "fashion-mnist", "cifar10", "cifar100")

CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
FASHION_MEAN = (0.2860,)
FASHION_STD = (0.3530,)
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

FMNIST_MINI_PATH = Path(__file__).with_name("fmnist_mini.npz.xz")
FMNIST_MINI_SHA256 = "56b5fd39ba45e58cbcfd2b28c2a31db0d54a7172475621ad15a7d79bc3db3a37"


@dataclass
class Dataset:
    """A dataset in memory: uint8 images ``(N, H, W, C)`` and int64 labels, in file order."""

    name: str
    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    digest: str = ""  # npz:PATH: the file's sha256 (its runs are keyed by it, not by the path alone)
    # npz:PATH with y_train_noisy: the file's own noisy label of each training image (y_train the
    # true ones), what noise type 'real' trains on (bench.data.bias)
    y_train_noisy: np.ndarray | None = field(default=None, repr=False)
    # npz:PATH with x_meta, y_meta: the training arrays hold that trusted set after the training images,
    # from this index on (its noisy labels, if any, its own); bench.data.bias draws the meta set there
    meta_start: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ---------------------------------------------------------------------------------------------
# data directory


def default_data_dir() -> Path:
    """The per-user default: ``$XDG_CACHE_HOME/reweight-bench/data`` (``~/.cache/...``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "reweight-bench" / "data"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` if given, else ``$BENCH_DATA_DIR``, else :func:`default_data_dir`."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get("BENCH_DATA_DIR") or default_data_dir()
    return Path(data_dir).expanduser()


# ---------------------------------------------------------------------------------------------
# entry point


def load_dataset(name: str, data_dir: str | os.PathLike | None = None,
                 download: bool = False) -> Dataset:
    """Load ``name`` (one of :data:`DATASET_NAMES` or ``npz:PATH``); DataError on any problem."""
    if not isinstance(name, str):
        raise DataError(f"dataset name must be a string, got {name!r}")
    if name.startswith("npz:"):
        if not name[4:].strip():
            raise DataError("npz: needs the file's path, e.g. npz:mine.npz")
        return load_npz(name[4:], data_dir=data_dir, name=name)
    if name == "fmnist-mini":
        return load_fmnist_mini()
    if name == "fashion-mnist":
        return load_fashion_mnist(resolve_data_dir(data_dir), download=download)
    if name in CIFAR:
        return load_cifar(name, resolve_data_dir(data_dir), download=download)
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}, "
                    "or npz:PATH for your own arrays")


# ---------------------------------------------------------------------------------------------
# checksums and downloads


def _why(e: BaseException) -> str:
    """An exception as one short line, for a one-line DataError."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_file(path: Path) -> str:
    return _hash_file(path, hashlib.md5(usedforsecurity=False))


def file_sha256(path: Path) -> str:
    return _hash_file(path, hashlib.sha256())


def _hash_file(path: Path, h) -> str:
    """The hex digest of ``h`` over a file, read in 1 MiB blocks."""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url: str, path: Path) -> None:
    """Write the bytes at ``url`` to ``path`` (torchvision's downloader if present). It checks no
    md5: :func:`download_file` does, so a corrupt download says which md5 it has, whichever fetched
    it (torchvision's own check says only 'File not found or corrupted.')."""
    try:
        from torchvision.datasets.utils import download_url
    except ImportError:
        import urllib.request

        with urllib.request.urlopen(url, timeout=60) as r, open(path, "wb") as f:  # noqa: S310
            for chunk in iter(lambda: r.read(1 << 20), b""):
                f.write(chunk)
        return
    download_url(url, str(path.parent), filename=path.name)


def download_file(url: str, dest: Path, md5: str) -> None:
    """Download ``url`` to ``dest`` via a temporary file, verify its md5, then rename it."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # --data-dir a file, under a file, or somewhere nothing can be made
        raise DataError(f"cannot create {dest.parent} to download into ({_why(e)}); "
                        "give --data-dir a folder you can write to") from None
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        _fetch(url, tmp)
        got = md5_file(tmp)
        if got != md5:
            raise DataError(f"download of {url} has md5 {got}, expected {md5}; try again later")
        os.replace(tmp, dest)
    except DataError:
        raise
    except Exception as e:  # network errors come in many types (URLError, OSError, RuntimeError)
        raise DataError(f"could not download {url} to {dest} ({_why(e)}); "
                        "check the connection or fetch the file by hand") from e
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# fmnist-mini (embedded)


def load_fmnist_mini(path: Path | None = None) -> Dataset:
    """The embedded Fashion-MNIST subset (see the module docstring); sha256-checked."""
    path = FMNIST_MINI_PATH if path is None else Path(path)
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise DataError(f"the embedded fmnist-mini file {path} cannot be read ({_why(e)}); "
                        "reinstall reweight-bench or rebuild it with scripts/make_fmnist_mini.py"
                        ) from e
    got = hashlib.sha256(blob).hexdigest()
    if got != FMNIST_MINI_SHA256:
        raise DataError(f"the embedded fmnist-mini file {path} is corrupt (sha256 {got}, expected "
                        f"{FMNIST_MINI_SHA256}); reinstall reweight-bench")
    with np.load(io.BytesIO(lzma.decompress(blob)), allow_pickle=False) as z:
        return Dataset(
            name="fmnist-mini",
            x_train=z["x_train"][..., None], y_train=z["y_train"].astype(np.int64),
            x_test=z["x_test"][..., None], y_test=z["y_test"].astype(np.int64),
            classes=[str(c) for c in z["classes"]],
            mean=FASHION_MEAN, std=FASHION_STD, augment=False)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST (idx files)

FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# md5 of the uncompressed idx files (shared/data/README.md; same content as torchvision's)
FASHION_MD5 = {  # small files first, so a damaged label file fails fast
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
}
# md5 of the .gz files at FASHION_URL (torchvision/datasets/mnist.py FashionMNIST.resources)
FASHION_GZ_MD5 = {
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}


def _fashion_dirs(data_dir: Path) -> list[Path]:
    return [data_dir / "fashion-mnist", data_dir / "FashionMNIST" / "raw", data_dir]


def _find_fashion_file(data_dir: Path, name: str) -> Path | None:
    for d in _fashion_dirs(data_dir):
        for candidate in (d / name, d / (name + ".gz")):
            if candidate.is_file():
                return candidate
    return None


def _read_idx(path: Path, name: str) -> np.ndarray:
    """Read an idx file (gzipped or not), check the md5 of its content, parse it."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is truncated or not a valid gzip file ({_why(e)}); delete it and "
                        "fetch it again") from e
    got = md5_bytes(raw)
    if got != FASHION_MD5[name]:
        raise DataError(f"{path} has the wrong checksum (md5 of the uncompressed content {got}, "
                        f"expected {FASHION_MD5[name]}); delete it and fetch it again")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(bytearray(raw), dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(data_dir: Path, download: bool = False) -> Dataset:
    """The original Fashion-MNIST idx files from ``data_dir`` (see the module docstring)."""
    paths = {n: _find_fashion_file(data_dir, n) for n in FASHION_MD5}
    missing = [n for n, p in paths.items() if p is None]
    if missing and download:
        for n in missing:
            dest = data_dir / "fashion-mnist" / (n + ".gz")
            download_file(FASHION_URL + n + ".gz", dest, FASHION_GZ_MD5[n])
            paths[n] = dest
        missing = []
    if missing:
        expected = ", ".join(f"{n}[.gz] (md5 of the uncompressed file {FASHION_MD5[n]})"
                             for n in missing)
        raise DataError(
            f"fashion-mnist: missing files in {data_dir / 'fashion-mnist'} (also looked in "
            f"{data_dir / 'FashionMNIST' / 'raw'} and {data_dir}): {expected}; when online, "
            f"fetch them with `python -m bench data --dataset fashion-mnist --data-dir {data_dir} --download` (from "
            f"{FASHION_URL}), copy the original idx files there "
            "(gzipped or not), or point --data-dir / BENCH_DATA_DIR at a folder that has them")
    arrays = {n: _read_idx(p, n) for n, p in paths.items()}
    return Dataset(
        name="fashion-mnist",
        x_train=arrays["train-images-idx3-ubyte"][..., None],
        y_train=arrays["train-labels-idx1-ubyte"].astype(np.int64),
        x_test=arrays["t10k-images-idx3-ubyte"][..., None],
        y_test=arrays["t10k-labels-idx1-ubyte"].astype(np.int64),
        classes=list(FASHION_CLASSES), mean=FASHION_MEAN, std=FASHION_STD, augment=False)


# ---------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (torchvision layout)


@dataclass(frozen=True)
class CifarSource:
    """Where a CIFAR dataset lives and its md5 table (torchvision/datasets/cifar.py)."""

    title: str
    folder: str
    archive: str
    url: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    meta_key: str
    label_key: str
    md5: dict[str, str]  # file name (archive or member) -> md5; tests patch entries in place

    @property
    def members(self) -> tuple[str, ...]:
        return self.train + self.test + (self.meta,)


CIFAR = {
    "cifar10": CifarSource(
        title="CIFAR-10", folder="cifar-10-batches-py", archive="cifar-10-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)), test=("test_batch",),
        meta="batches.meta", meta_key="label_names", label_key="labels",
        md5={"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
             "data_batch_1": "c99cafc152244af753f735de768cd75f",
             "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
             "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
             "data_batch_4": "634d18415352ddfa80567beed471001a",
             "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
             "test_batch": "40351d587109b95175f43aff81a1287e",
             "batches.meta": "5ff9c542aee3614f3951f8cda6e48888"}),
    "cifar100": CifarSource(
        title="CIFAR-100", folder="cifar-100-python", archive="cifar-100-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        train=("train",), test=("test",), meta="meta", meta_key="fine_label_names",
        label_key="fine_labels",
        md5={"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
             "train": "16019d7e3df5f24257cddd939b257f8d",
             "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
             "meta": "7973b15100ade9c7d40fb424638fde48"}),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts, lists, numpy arrays) and refuses any other global.

    ``_codecs.encode`` is how python 3 writes bytes at protocol 2 (the originals, written by
    python 2, hold the array data as a plain string).
    """

    _ALLOWED = {("_codecs", "encode"),
                ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy.core") and hasattr(np, "_core"):  # numpy >= 2 moved it
            module = "numpy._core" + module[len("numpy.core"):]
        return super().find_class(module, name)


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        entry = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as e:  # truncated or foreign content: any unpickling failure
        raise DataError(f"{where} cannot be read ({_why(e)}); delete it and fetch "
                        "it again") from e
    if not isinstance(entry, dict):
        raise DataError(f"{where} does not hold a CIFAR batch (a dict)")
    return entry


def _cifar_batch(entry: dict, src: CifarSource, where: str) -> tuple[np.ndarray, np.ndarray]:
    data, labels = entry.get("data"), entry.get(src.label_key)
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != 3072 or labels is None or len(labels) != len(data)):
        raise DataError(f"{where} is not a {src.title} batch: expected 'data' uint8 (N, 3072) and "
                        f"'{src.label_key}' of length N")
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # stored row-major as C, H, W
    return np.ascontiguousarray(x), np.asarray(labels, dtype=np.int64)


def _missing_cifar(src: CifarSource, data_dir: Path, detail: str = "") -> DataError:
    files = ", ".join(f"{n} (md5 {src.md5[n]})" for n in src.members)
    return DataError(
        f"{src.title}: no usable files in {data_dir}{detail}; expected {src.archive} "
        f"(md5 {src.md5[src.archive]}) or the folder {src.folder}/ with {files}; when online, fetch "
        f"them with `python -m bench data --dataset {src.title.lower().replace('-', '')} --data-dir {data_dir} "
        f"--download` (from {src.url}), copy them there, or point --data-dir / BENCH_DATA_DIR at a "
        "folder that has them")


def _read_member(raw: bytes | None, name: str, src: CifarSource, where: str) -> dict:
    if raw is None:
        raise DataError(f"{where} is missing")
    got = md5_bytes(raw)
    if got != src.md5[name]:
        raise DataError(f"{where} has the wrong checksum (md5 {got}, expected {src.md5[name]}); "
                        "delete it and fetch it again")
    return _unpickle(raw, where)


def load_cifar(name: str, data_dir: Path, download: bool = False) -> Dataset:
    """CIFAR-10/100 in torchvision's layout (folder, else archive, else download)."""
    src = CIFAR[name]
    folder, archive = data_dir / src.folder, data_dir / src.archive
    present = [n for n in src.members if (folder / n).is_file()]
    if len(present) == len(src.members):
        entries = {n: _read_member((folder / n).read_bytes(), n, src, str(folder / n))
                   for n in src.members}
    else:
        if not archive.is_file():
            detail = (f" ({src.folder}/ lacks {', '.join(n for n in src.members if n not in present)})"
                      if folder.is_dir() else "")
            if not download:
                raise _missing_cifar(src, data_dir, detail)
            download_file(src.url, archive, src.md5[src.archive])
        entries = _read_cifar_archive(archive, src)
    xs, ys = {}, {}
    for split, names in (("train", src.train), ("test", src.test)):
        parts = [_cifar_batch(entries[n], src, f"{src.folder}/{n}") for n in names]
        xs[split] = np.concatenate([p[0] for p in parts])
        ys[split] = np.concatenate([p[1] for p in parts])
    classes = entries[src.meta].get(src.meta_key)
    if not isinstance(classes, list):
        raise DataError(f"{src.folder}/{src.meta} lacks the class names ('{src.meta_key}')")
    ds = Dataset(name=name, x_train=xs["train"], y_train=ys["train"], x_test=xs["test"],
                 y_test=ys["test"], classes=[str(c) for c in classes], mean=CIFAR_MEAN,
                 std=CIFAR_STD, augment=True)
    _check_labels(ds.y_train, ds.y_test, ds.num_classes, f"{src.title} in {data_dir}")
    return ds


def _read_cifar_archive(archive: Path, src: CifarSource) -> dict[str, dict]:
    got = md5_file(archive)
    if got != src.md5[src.archive]:
        raise DataError(f"{archive} has the wrong checksum (md5 {got}, expected "
                        f"{src.md5[src.archive]}); it is truncated or corrupt: delete it and "
                        "fetch it again")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            raws = {}
            for n in src.members:
                try:
                    f = tar.extractfile(f"{src.folder}/{n}")
                except KeyError:
                    f = None
                raws[n] = f.read() if f is not None else None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{archive} cannot be read ({_why(e)}); delete it and "
                        "fetch it again") from e
    return {n: _read_member(raws[n], n, src, f"{archive}:{src.folder}/{n}") for n in src.members}


# ---------------------------------------------------------------------------------------------
# npz: bring your own data


def _check_labels(y_train: np.ndarray, y_test: np.ndarray, num_classes: int, where: str,
                  inferred: bool = False) -> None:
    for split, y in (("y_train", y_train), ("y_test", y_test)):
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(f"{where}: {split} has labels outside 0..{num_classes - 1} "
                            f"(min {y.min()}, max {y.max()})")
    present = set(np.unique(y_train).tolist())  # (not a bincount: num_classes may be a stray 10**9 + 1)
    if len(present) < num_classes:
        missing = list(itertools.islice((c for c in range(num_classes) if c not in present), 6))
        listed = ", ".join(map(str, missing[:5])) + (" ..." if num_classes - len(present) > 5 else "")
        hint = (f" (without a classes array the classes are 0..max label = 0..{num_classes - 1}; "
                f"is label {num_classes - 1} a stray?)" if inferred else "")
        many = num_classes - len(present) > 1
        raise DataError(f"{where}: class{'es' * many} {listed} {'have' if many else 'has'} "
                        f"no training samples; every class needs at least one{hint}")


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] pixel units, from exact integer sums.

    Sums run over whole images (rows of H*W*C values) in chunks, which numpy vectorises well;
    squares of uint8 values fit uint16.
    """
    channels = x.shape[-1]
    rows = x.reshape(len(x), -1)
    total = np.zeros(rows.shape[1], dtype=np.uint64)
    squares = np.zeros(rows.shape[1], dtype=np.uint64)
    step = max(1, (1 << 22) // rows.shape[1])
    for start in range(0, len(rows), step):
        chunk = rows[start:start + step]
        total += chunk.sum(axis=0, dtype=np.uint64)
        sq = chunk.astype(np.uint16)
        sq *= sq
        squares += sq.sum(axis=0, dtype=np.uint64)
    n = x.size // channels
    means = [int(t) / n for t in total.reshape(-1, channels).sum(axis=0)]
    variances = [int(q) / n - m * m for q, m in zip(squares.reshape(-1, channels).sum(axis=0), means)]
    return tuple(m / 255 for m in means), tuple(max(v, 0.0) ** 0.5 / 255 for v in variances)


def load_npz(path: str | os.PathLike, data_dir: str | os.PathLike | None = None,
             name: str | None = None) -> Dataset:
    """Your own arrays from a ``.npz`` (``--dataset npz:PATH``).

    Required keys: ``x_train``, ``x_test`` (uint8, ``N x H x W`` or ``N x H x W x C``, the same
    H, W, C in both; channels last: ``N x C x H x W``, PyTorch's layout, with C = 1 or 3 and
    W > 4 is refused as channels-first), ``y_train``, ``y_test`` (integer, 1-D, one per image).
    Optional: ``classes`` (K names, a string array; default ``"0" .. "K-1"`` with K = max
    label + 1), ``mean`` and ``std`` (per channel, in [0, 1] units of the image scaled from
    0-255, as the loader normalises ``(x / 255 - mean) / std``: finite, mean in [0, 1],
    0 < std <= 1, so CIFAR-10's red channel is 0.491 and 0.247, not 125.3 and 63.0; default:
    computed from ``x_train``), ``y_train_noisy`` (a noisy label for every training image, with
    ``y_train`` their true labels, as CIFAR-10N gives human labels beside CIFAR-10's: the cell's
    noise ``real`` trains on them; bench.data.bias), ``x_meta`` and ``y_meta`` together (a
    trusted, clean set apart from the training images, e.g. Clothing1M's clean subsets, in the
    layout of ``x_train``: the meta set is drawn from it instead of from the training images,
    which then all train; bench.data.bias). Neither split may be empty. Every label must lie in
    0..K-1 and every class must have training samples.
    Augmentation (random crop + flip) is on for 32 x 32 x 3 images (CIFAR-like), off otherwise.
    A relative PATH is looked up in the working directory, then in the data directory. The file
    is loaded with ``allow_pickle=False``; no checksum to match (it is yours), but its sha256 is
    kept (``Dataset.digest``): a run on it is keyed by it (``RunSpec.data_sha256``), so results
    on an earlier version of the file are not taken for results on this one.
    """
    name = name or f"npz:{path}"
    p = Path(path).expanduser()
    if not p.is_absolute() and not p.is_file():
        alt = resolve_data_dir(data_dir) / p
        p = alt if alt.is_file() else p
    if p.is_dir():
        raise DataError(f"{name}: {p} is a directory, not an .npz file")
    if not p.is_file():
        raise DataError(f"{name}: no such file {p} (looked in the working directory and the "
                        "data directory)")
    where = f"{name} ({p})"
    with open(p, "rb") as f:
        if f.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):  # every zip, and so every .npz, starts so
            raise DataError(f"{where} is not an .npz archive (numpy.savez or savez_compressed writes one)")
    try:
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
            if missing:
                raise DataError(f"{where}: missing key(s) {', '.join(missing)}; an npz dataset "
                                "needs x_train, y_train, x_test, y_test (optional: classes, "
                                "mean, std, y_train_noisy, x_meta and y_meta)")
            arrays = {k: z[k] for k in z.files if k in ("x_train", "y_train", "x_test", "y_test", "classes",
                                                          "mean", "std", "y_train_noisy", "x_meta", "y_meta")}
    except DataError:
        raise
    except Exception as e:  # not a zip, truncated member, object arrays, ...
        raise DataError(f"{where} cannot be read as an npz of plain arrays "
                        f"({_why(e)})") from e
    if ("x_meta" in arrays) != ("y_meta" in arrays):
        raise DataError(f"{where}: give both x_meta and y_meta (your own meta set), or neither")
    xs = {}
    for split in ("train", "test", "meta")[:3 if "x_meta" in arrays else 2]:
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim not in (3, 4):
            raise DataError(f"{where}: x_{split} must be uint8 N x H x W or N x H x W x C, "
                            f"got {x.dtype} with shape {x.shape}")
        if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer)) or len(y) != len(x):
            raise DataError(f"{where}: y_{split} must be 1-D integer labels, one per image "
                            f"(got {y.dtype} with shape {y.shape} for {len(x)} images)")
        # N x C x H x W (PyTorch's layout) would be read as H = C, C = W: (N, 3, 32, 32) has C = 32
        if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[-1] > 4:
            raise DataError(f"{where}: x_{split} with shape {x.shape} looks channels-first "
                            "(N x C x H x W); store N x H x W x C, e.g. "
                            "np.transpose(x, (0, 2, 3, 1))")
        xs[split] = x[..., None] if x.ndim == 3 else x
    if xs["train"].shape[1:] != xs["test"].shape[1:] or min(xs["train"].shape[1:]) < 1:
        raise DataError(f"{where}: x_train and x_test must share H x W x C, got "
                        f"{xs['train'].shape[1:]} and {xs['test'].shape[1:]}")
    if "meta" in xs and xs["meta"].shape[1:] != xs["train"].shape[1:]:
        raise DataError(f"{where}: x_meta and x_train must share H x W x C, got "
                        f"{xs['meta'].shape[1:]} and {xs['train'].shape[1:]}")
    for split in xs:
        if len(xs[split]) == 0:
            raise DataError(f"{where}: x_{split} is empty")
    y_train = arrays["y_train"].astype(np.int64)
    y_test = arrays["y_test"].astype(np.int64)
    if "classes" in arrays:
        cls = arrays["classes"]
        if cls.ndim != 1 or cls.dtype.kind not in "UST":
            raise DataError(f"{where}: classes must be a 1-D string array, got {cls.dtype} "
                            f"with shape {cls.shape}")
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in cls.tolist()]
    else:
        k = int(max(y_train.max(), y_test.max() if len(y_test) else 0)) + 1
        _check_labels(y_train, y_test, k, where, inferred=True)  # before K names: a stray 10**9 is named, not built
        classes = [str(i) for i in range(k)]
    if len(classes) < 2:
        raise DataError(f"{where}: need at least 2 classes, got {len(classes)}")
    if "classes" in arrays:  # (inferred classes were checked above, before their names were built)
        _check_labels(y_train, y_test, len(classes), where)
    y_noisy = None
    if "y_train_noisy" in arrays:
        y_noisy = arrays["y_train_noisy"]
        if y_noisy.ndim != 1 or not np.issubdtype(y_noisy.dtype, np.integer) or len(y_noisy) != len(y_train):
            raise DataError(f"{where}: y_train_noisy must be 1-D integer labels, one per training image "
                            f"(got {y_noisy.dtype} with shape {y_noisy.shape} for {len(y_train)} images)")
        y_noisy = y_noisy.astype(np.int64)
        if y_noisy.min() < 0 or y_noisy.max() >= len(classes):
            raise DataError(f"{where}: y_train_noisy has labels outside 0..{len(classes) - 1} "
                            f"(min {y_noisy.min()}, max {y_noisy.max()})")
    channels = xs["train"].shape[-1]
    if ("mean" in arrays) != ("std" in arrays):
        raise DataError(f"{where}: give both mean and std, or neither")
    if "mean" in arrays:
        try:
            mean, std = (tuple(float(v) for v in np.ravel(arrays[k])) for k in ("mean", "std"))
        except (TypeError, ValueError):
            raise DataError(f"{where}: mean and std must be numbers, got {arrays['mean'].dtype} "
                            f"and {arrays['std'].dtype}") from None
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise DataError(f"{where}: mean and std need {channels} value(s) each, std > 0")
        for key, values in (("mean", mean), ("std", std)):
            if not all(math.isfinite(v) for v in values):
                raise DataError(f"{where}: {key} must be finite, got {key}={list(values)}")
        if min(mean) < 0 or max(mean) > 1 or max(std) > 1:  # e.g. mean=[127.], std=[60.]
            raise DataError(f"{where}: mean and std are in [0, 1] units of the image scaled "
                            f"from 0-255 (mean in [0, 1], std in (0, 1]), got mean={list(mean)}, "
                            f"std={list(std)}; divide 0-255-scale values by 255")
    else:
        mean, std = _channel_stats(xs["train"])
        std = tuple(s if s > 0 else 1.0 for s in std)  # a constant channel: do not divide by 0
    h, w, c = xs["train"].shape[1:]
    x_train, meta_start = xs["train"], None
    if "meta" in xs:  # your own meta set: kept after the training images, its labels clean
        y_meta = arrays["y_meta"].astype(np.int64)
        if y_meta.min() < 0 or y_meta.max() >= len(classes):
            raise DataError(f"{where}: y_meta has labels outside 0..{len(classes) - 1} "
                            f"(min {y_meta.min()}, max {y_meta.max()})")
        meta_start = len(y_train)
        x_train = np.concatenate([x_train, xs["meta"]])
        y_train = np.concatenate([y_train, y_meta])
        if y_noisy is not None:
            y_noisy = np.concatenate([y_noisy, y_meta])
    return Dataset(name=name, x_train=x_train, y_train=y_train, x_test=xs["test"],
                   y_test=y_test, classes=classes, mean=mean, std=std,
                   augment=(h, w, c) == (32, 32, 3), digest=file_sha256(p), y_train_noisy=y_noisy,
                   meta_start=meta_start)
