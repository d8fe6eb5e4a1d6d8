"""Seeds 0 and 1 of the imbalance-10 cell, trained again this session, against the session-27
column of ../cpu-avx512-2026-12-06-cifar10-cells/table_last.md (the same runs: same specs, same keys)."""
import re
import sys

from bench.store import Store

runs = Store(sys.argv[1], create=False).runs()
old = {}
for line in open(sys.argv[2]):
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) > 1 and "[data_sha256" in cells[0]:
        old[cells[0].split(" [")[0]] = cells[1]
print("| method | session 27 (seeds as stored then) | trained again (the same seeds) | same |")
print("| --- | --- | --- | --- |")
for label, text in sorted(old.items()):
    n = int(re.search(r"n=(\d)", text).group(1))
    seeds = list(range(n))
    acc = runs[(runs["display_name"] == label) & runs["seed"].isin(seeds)].sort_values("seed")["acc_last"]
    again = f"{acc.mean():.2f}" + (f" ± {acc.std(ddof=1):.2f}" if n > 1 else "") + f" (n={len(acc)})"
    print(f"| {label} | {text} | {again} | {'yes' if again == text else 'NO'} |")
