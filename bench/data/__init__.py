"""Data: datasets with checksums, the papers' bias (meta split, imbalance, label noise), and a
device-resident loader. See datasets.py, bias.py, loader.py and PROTOCOL.md §1."""

from bench.data.bias import (
    NOISE_TYPES,
    BiasedData,
    BiasSpec,
    imbalance_profile,
    make_biased,
    transition_matrix,
)
from bench.data.datasets import (
    DATASET_NAMES,
    Dataset,
    default_data_dir,
    load_dataset,
    resolve_data_dir,
)


def __getattr__(name):
    # Loader imports torch; load it on first use so datasets and bias stay torch-free
    if name == "Loader":
        from bench.data.loader import Loader

        return Loader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DATASET_NAMES", "NOISE_TYPES", "BiasSpec", "BiasedData", "Dataset", "Loader",
    "default_data_dir", "imbalance_profile", "load_dataset", "make_biased",
    "resolve_data_dir", "transition_matrix",
]
