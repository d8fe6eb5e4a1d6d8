"""Runs trained again against the columns of a table printed earlier from the same runs (same
specs, same keys): python reproduced.py STORE OLD_TABLE.md imbNN [imbNN ...] prints one row per
column (the one whose heading has that word) and method, from the store's runs of that imbalance
and the seeds 0 .. n-1 of the printed n."""
import re
import sys

from bench.store import Store

runs = Store(sys.argv[1], create=False).runs()
lines = [line for line in open(sys.argv[2]) if line.startswith("|")]
header = [c.strip() for c in lines[0].strip().strip("|").split("|")]
print("| cell | method | printed then | trained again (the same seeds) | same |")
print("| --- | --- | --- | --- | --- |")
for wanted in sys.argv[3:]:
    column = next(i for i, name in enumerate(header) if wanted in name.split())
    imbalance = int(wanted.removeprefix("imb"))
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        label, text = cells[0].split(" [")[0], cells[column]
        n = int(re.search(r"n=(\d)", text).group(1))
        rows = runs[(runs["display_name"] == label) & runs["seed"].isin(range(n))
                    & (runs["imbalance"] == imbalance)].sort_values("seed")["acc_last"]
        again = f"{rows.mean():.2f}" + (f" ± {rows.std(ddof=1):.2f}" if n > 1 else "") + f" (n={len(rows)})"
        print(f"| {wanted} | {label} | {text} | {again} | {'yes' if again == text else 'NO'} |")
