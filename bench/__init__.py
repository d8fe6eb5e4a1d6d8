"""reweight-bench: a benchmark of sample-reweighting methods on noisy, long-tailed data."""

__version__ = "0.1.0"
