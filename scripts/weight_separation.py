#!/usr/bin/env python3
"""Mean final weight of clean vs noisy training samples per observed class, and of clean tail vs
clean head samples, for every stored run that recorded a per-sample ``weight`` (MW-Net, CurveNet,
CB, LDAM-DRW): the claim of the CurveNet paper's Fig. 5 (clean above noisy in every class, tail
above head), read from the store.

usage: python scripts/weight_separation.py STORE [METHOD ...]
"""

import sys

from bench.data.bias import noise_text
from bench.store import Store


def separation(samples) -> dict:
    w, noisy = samples["weight"].to_numpy(), samples["is_noisy"].to_numpy(bool)
    observed, clean = samples["observed_label"].to_numpy(), samples["clean_label"].to_numpy()
    classes = int(clean.max()) + 1
    per_class = []
    for k in range(classes):
        c, n = (observed == k) & ~noisy, (observed == k) & noisy
        if c.any() and n.any():
            per_class.append((k, w[c].mean(), w[n].mean()))
    return {"clean": w[~noisy].mean(), "noisy": w[noisy].mean(),
            "clean_above_noisy": sum(c > n for _, c, n in per_class), "classes": len(per_class),
            "clean_head": w[~noisy & (clean < classes // 2)].mean(),
            "clean_tail": w[~noisy & (clean >= classes // 2)].mean()}


def main(argv):
    if not argv:
        print(__doc__)
        return 2
    store = Store(argv[0], create=False)
    runs = store.runs()
    if len(argv) > 1:
        runs = runs[runs["method"].isin(argv[1:])]
    print("method          cell                          seed  clean  noisy  clean>noisy  head   tail")
    for _, run in runs.sort_values(["display_name", "imbalance", "seed"]).iterrows():
        samples = store.samples(run["key"])
        if "weight" not in samples:
            continue
        s = separation(samples)
        cell = f"{run['dataset']} imb{run['imbalance']:g} {noise_text(run['noise_type'], run['noise_rate'])}"
        print(f"{run['display_name']:15s} {cell:29s} {run['seed']:4d}  {s['clean']:.3f}  {s['noisy']:.3f}"
              f"  {s['clean_above_noisy']:4d}/{s['classes']:<6d} {s['clean_head']:.3f}  {s['clean_tail']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
