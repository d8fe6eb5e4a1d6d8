#!/usr/bin/env python3
"""Build bench/data/fmnist_mini.npz.xz, the embedded default dataset, from the real Fashion-MNIST.

Selection (deterministic, no RNG): for each class, the first 1,000 training and the first 200
test images in the original file order; the selected images keep that order (sorted original
indices). Why this size: see the docstring of bench/data/datasets.py.

The file is an .npz (a zip of .npy members, stored uncompressed, every timestamp fixed to
1980-01-01 so the bytes depend only on the content) compressed as a whole with xz (preset 9e).
Keys: x_train uint8 (10000, 28, 28), y_train uint8, x_test uint8 (2000, 28, 28), y_test uint8,
classes (str), source_train_index / source_test_index (uint16: the rows of the original files).

Compression, measured on these arrays: np.savez_compressed (zip deflate) 5,300,630 bytes; zip
with deflate level 9, 5,300,490; zip with per-member LZMA, 4,536,213; whole-file xz preset 9e,
4,525,508 (the smallest, so it is what ships; decompression takes about 0.3 s). Running the
script twice gives the same bytes (same sha256) with the same liblzma.

usage: python scripts/make_fmnist_mini.py [FASHION_MNIST_DIR] [--out PATH]
  FASHION_MNIST_DIR defaults to ../shared/data/fashion-mnist beside the repository; its idx files
  are checked against the md5 table in bench/data/datasets.py. Prints the sha256 to record as
  FMNIST_MINI_SHA256 in bench/data/datasets.py.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import lzma
import sys
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.data.datasets import FASHION_CLASSES, load_fashion_mnist  # noqa: E402

TRAIN_PER_CLASS = 1000
TEST_PER_CLASS = 200


def first_per_class(y: np.ndarray, per_class: int) -> np.ndarray:
    """The first ``per_class`` indices of every class, in original order (sorted)."""
    return np.sort(np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(10)]))


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A reproducible .npz: stored members, fixed timestamps, fixed member order."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(value), allow_pickle=False)
    return buf.getvalue()


def build(src: Path) -> bytes:
    ds = load_fashion_mnist(src)
    ti = first_per_class(ds.y_train, TRAIN_PER_CLASS)
    si = first_per_class(ds.y_test, TEST_PER_CLASS)
    arrays = {
        "x_train": ds.x_train[ti, :, :, 0], "y_train": ds.y_train[ti].astype(np.uint8),
        "x_test": ds.x_test[si, :, :, 0], "y_test": ds.y_test[si].astype(np.uint8),
        "classes": np.array(FASHION_CLASSES),
        "source_train_index": ti.astype(np.uint16), "source_test_index": si.astype(np.uint16),
    }
    return lzma.compress(npz_bytes(arrays), preset=9 | lzma.PRESET_EXTREME)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", nargs="?", type=Path, default=REPO.parent / "shared/data/fashion-mnist",
                        help="folder with the Fashion-MNIST idx files (gzipped or not)")
    parser.add_argument("--out", type=Path, default=REPO / "bench/data/fmnist_mini.npz.xz")
    args = parser.parse_args()
    blob = build(args.src)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_bytes(blob)
    tmp.replace(args.out)
    print(f"wrote {args.out}: {len(blob):,} bytes, sha256 {hashlib.sha256(blob).hexdigest()}")


if __name__ == "__main__":
    main()
