"""``python -m bench data``: load a dataset, bias it, print what was realised.

``bench.cli.make_parser`` calls :func:`add_arguments` on its ``data`` sub-parser and :func:`main`
with the parsed namespace; ``bench.cli.main`` catches :class:`~bench.errors.BenchError` and exits
2. ``python -m bench.data.cli`` runs this piece on its own with the same behaviour. The harness
reuses :func:`parse_noise` and :func:`default_meta_per_class`. Unlike ``bench run`` (the quick
cell: imbalance 10, flip2 0.4), ``bench data`` defaults to the unbiased data (imbalance 1, no
noise): give the cell to see what a run trains on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys

from bench.data.bias import (
    NOISE_TYPES,
    REAL_NOISE,
    SYNTHETIC_NOISE,
    BiasSpec,
    make_biased,
    noise_text,
    own_meta_per_class,
)
from bench.data.datasets import DATASET_NAMES, load_dataset
from bench.errors import BenchError, DataError

# Meta samples per class when --meta-per-class is not given: CurveNet / MW-Net(noise) use 1,000
# in total (PROTOCOL.md §1): 100 per class on CIFAR-10, 10 on CIFAR-100. fmnist-mini keeps 20
# (n_max 980, see datasets.py); fashion-mnist follows CIFAR-10; your own npz data gets none.
DEFAULT_META_PER_CLASS = {"fmnist-mini": 20, "fashion-mnist": 100, "cifar10": 100,
                          "cifar100": 10, "npz": 0}


def default_meta_per_class(dataset: str) -> int:
    """The default m for a dataset name (``npz:PATH`` -> the ``npz`` entry)."""
    key = "npz" if dataset.startswith("npz:") else dataset
    if key not in DEFAULT_META_PER_CLASS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASET_NAMES)}, "
                        "or npz:PATH for your own arrays")
    return DEFAULT_META_PER_CLASS[key]


def parse_noise(text: str) -> tuple[str, float]:
    """``"none"``, ``"real"`` or ``"TYPE:RATE"`` (e.g. ``"flip2:0.4"``) -> ``(type, rate)``;
    DataError if bad."""
    kinds = ", ".join(("none", *SYNTHETIC_NOISE))
    text = str(text).strip()
    kind, sep, rate_text = text.partition(":")
    if kind == REAL_NOISE:
        if sep:
            raise DataError(f"--noise {text!r}: real noise (your npz file's own labels) has no rate; "
                            "give --noise real")
        return REAL_NOISE, 0.0
    if not sep:
        if kind == "none":
            return "none", 0.0
        raise DataError(f"--noise expects TYPE:RATE (e.g. flip2:0.4), none or real, got {text!r}; "
                        f"types: {kinds}")
    if kind not in NOISE_TYPES:
        raise DataError(f"unknown noise type {kind!r} in --noise {text!r}; choose one of {kinds}, or real")
    try:
        rate = float(rate_text) + 0.0  # -0 is 0: one cell, one key
    except ValueError:
        raise DataError(f"--noise {text!r}: the rate {rate_text!r} is not a number") from None
    if not (math.isfinite(rate) and 0 <= rate < 1):
        raise DataError(f"--noise {text!r}: the rate must lie in [0, 1)")
    if kind == "none" and rate != 0:
        raise DataError(f"--noise {text!r}: noise type 'none' takes rate 0")
    most = MAJORITY_KEPT_UP_TO.get(kind)
    if most is not None and rate > most:
        print(f"bench: warning: --noise {text}: above {most:.3g}, a flip target's label is more frequent among a "
              "class's samples than the class's own, so training on them teaches the flip (the papers stay at or "
              "below 0.45)", file=sys.stderr)
    return kind, rate


# the rate up to which a flip noise leaves each class's true label the most frequent of its
# samples' observed labels: flip moves p to one class (1 - p >= p), flip2 p / 2 to each of two
MAJORITY_KEPT_UP_TO = {"flip": 0.5, "flip2": 2 / 3}


def _one_number(text: str) -> float:
    """``--imbalance``: one number (bench data shows one cell; bench run takes lists)."""
    if "," in text:
        raise argparse.ArgumentTypeError(f"{text!r}: bench data shows one cell, so give one value "
                                         "(bench run takes lists)")
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="fmnist-mini",
                        help=f"{', '.join(DATASET_NAMES)}, or npz:PATH (default fmnist-mini, "
                             "embedded)")
    parser.add_argument("--data-dir", default=None,
                        help="data directory (default $BENCH_DATA_DIR, else "
                             "~/.cache/reweight-bench/data)")
    parser.add_argument("--download", action="store_true",
                        help="download missing CIFAR / Fashion-MNIST files (needs a connection)")
    parser.add_argument("--imbalance", type=_one_number, default=1.0,
                        help="n_max / n_min, class 0 the head (default 1: balanced; `bench run`'s quick "
                             "cell is --imbalance 10 --noise flip2:0.4)")
    parser.add_argument("--noise", default="none",
                        help=f"TYPE:RATE, none, or real (your npz file's own labels as they are); types: "
                             f"{', '.join(('none', *SYNTHETIC_NOISE))} (default none)")
    parser.add_argument("--meta-per-class", type=int, default=None,
                        help="clean meta samples per class (default: "
                             + ", ".join(f"{k} {v}" for k, v in DEFAULT_META_PER_CLASS.items())
                             + ")")
    parser.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def spec_from_args(args: argparse.Namespace) -> BiasSpec:
    if "," in str(args.noise):
        raise DataError(f"--noise {args.noise}: bench data shows one cell, so give one noise (bench run takes lists)")
    noise_type, noise_rate = parse_noise(args.noise)
    meta = args.meta_per_class
    if meta is None:
        meta = default_meta_per_class(args.dataset)
    spec = BiasSpec(imbalance=args.imbalance, noise_type=noise_type, noise_rate=noise_rate,
                    meta_per_class=meta, seed=args.seed)
    spec.validate()
    return spec


def main(args: argparse.Namespace) -> int:
    """Print the realised bias (a table, or one JSON object with ``--json``); 0 on success."""
    spec = spec_from_args(args)  # check the cheap things before loading anything
    dataset = load_dataset(args.dataset, args.data_dir, args.download)
    own = own_meta_per_class(dataset)
    if args.meta_per_class is None and own is not None:  # a file's own meta set: all of it that stays balanced
        spec = dataclasses.replace(spec, meta_per_class=own)
        if own == 0:
            print(f"bench: note: {args.dataset}'s own meta set (x_meta, y_meta) lacks a class, so it gives no "
                  "meta set (a meta set holds m of every class)", file=sys.stderr)
    data = make_biased(dataset, spec)
    summary = data.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_summary(summary))
    return 0


def format_summary(s: dict) -> str:
    spec = s["spec"]
    noise = noise_text(spec["noise_type"], spec["noise_rate"], clean="none", sep=" ")
    known = s.get("noise_known", True)
    rates = (f"realised {s['noise_rate_realised']:.4f}, expected {s['noise_rate_expected']:.4f}" if known else
             "which labels are wrong is not known: the file has no y_train_noisy")
    lines = [
        f"dataset {s['dataset']}: {len(s['classes'])} classes, train {s['num_train']}, "
        f"meta {s['num_meta']}, test {s['num_test']} (data seed {spec['seed']})",
        f"imbalance {spec['imbalance']:g} (realised {s['imbalance_realised']:.2f}), noise {noise} ({rates}), "
        f"meta {spec['meta_per_class']} per class",
        "",
    ]
    width = max(5, *(len(c) for c in s["classes"]))
    head = f"{'class':>5}  {'name':<{width}}  {'train':>6}  {'noisy':>6}  {'observed':>8}  " \
           f"{'meta':>5}  {'test':>5}"
    lines += [head, "-" * len(head)]
    cols = ("train_per_class", "noisy_per_class", "observed_per_class", "meta_per_class",
            "test_per_class")
    for i, name in enumerate(s["classes"]):
        tr, no, ob, me, te = (s[c][i] for c in cols)
        lines.append(f"{i:>5}  {name:<{width}}  {tr:>6}  {no if known else '?':>6}  {ob:>8}  {me:>5}  {te:>5}")
    tr, no, ob, me, te = (sum(s[c]) for c in cols)
    lines += ["-" * len(head),
              f"{'':>5}  {'total':<{width}}  {tr:>6}  {no if known else '?':>6}  {ob:>8}  {me:>5}  {te:>5}"]
    K = len(s["classes"])
    if spec["noise_type"] != "none" and K <= 20 and known:
        lines += ["", "label transitions over the training pool (row clean, column observed):"]
        w = max(len(str(v)) for row in s["transition"] for v in row) + 1
        lines.append("     " + "".join(f"{j:>{w}}" for j in range(K)))
        lines += [f"{i:>4} " + "".join(f"{v:>{w}}" for v in row)
                  for i, row in enumerate(s["transition"])]
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: errors as one line on stderr, exit code 2."""
    parser = argparse.ArgumentParser(prog="python -m bench.data.cli", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return main(args)
    except BenchError as e:
        print("bench: error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run())
