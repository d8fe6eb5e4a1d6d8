"""The critical difference diagram of ``bench rank --plot FILE`` (Demšar, JMLR 2006, Fig. 1 and 2).

The methods' average ranks on an axis (1, the best, on the left), each name joined to its rank.
Without a control (Fig. 1): the Nemenyi critical difference as a bar over the axis, and thick lines
under it joining each maximal run of methods whose ranks lie less than CD apart (the groups the
test cannot tell apart). With a control (Fig. 2): the Bonferroni-Dunn interval, CD to each side of
the control's rank; the names Holm's procedure finds different from the control are starred. Where
the Friedman test does not reject, no group line or interval is drawn: the title says so.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def nemenyi_groups(average_rank: pd.Series, cd: float) -> list[list[str]]:
    """The maximal runs of methods, in rank order, whose average ranks differ by less than ``cd``
    (Nemenyi cannot tell them apart): the lines of Demšar's Fig. 1. Runs of one method are left out."""
    order = average_rank.sort_values(kind="stable")
    names, ranks = list(order.index), order.to_numpy(float)
    groups, reach = [], -1
    for i in range(len(names)):
        j = i
        while j + 1 < len(names) and ranks[j + 1] - ranks[i] < cd:
            j += 1
        if j > i and j > reach:  # not inside the previous group
            groups.append(names[i:j + 1])
            reach = j
    return groups


def draw(result: dict, out: Path, title: str, control: dict | None = None) -> Path:
    """Write the diagram of :func:`bench.rank.friedman_nemenyi`'s ``result`` (and
    :func:`bench.rank.holm_versus_control`'s ``control``) to ``out``; returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.plots import save_figure

    avg = result["average_rank"].sort_values(kind="stable")
    k, drawn = len(avg), result["rejects"]
    differs = {r["method"] for r in control["rows"] if r["differs"]} if control else set()
    half = (k + 1) // 2
    rows = max(half, k - half)
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.32 * rows))
    left_edge, right_edge = 0.3 - 0.9 * k / 4, k + 0.7 + 0.9 * k / 4  # room for the names beside the axis
    ax.set_xlim(left_edge, right_edge)
    ax.set_ylim(-(0.9 * rows + 0.6), 2.2)
    ax.axis("off")
    ax.hlines(0, 1, k, color="black", lw=1)
    for r in range(1, k + 1):
        ax.vlines(r, 0, 0.18, color="black", lw=1)
        ax.text(r, 0.3, str(r), ha="center", va="bottom", fontsize=9)
    for i, (name, rank) in enumerate(avg.items()):
        left = i < half
        level = -(i + 1 if left else k - i) * 0.9
        end = left_edge + 0.9 if left else right_edge - 0.9
        ax.plot([rank, rank, end], [0, level, level], color="black", lw=0.8)
        label = f"{name}{' *' if name in differs else ''} ({rank:.2f})"
        weight = "bold" if control and name == control["control"] else "normal"
        ax.text(end + (-0.05 if left else 0.05), level, label, ha="right" if left else "left", va="center",
                fontsize=9, fontweight=weight)
    if drawn and control is None:
        cd = result["cd"]
        ax.plot([1, 1 + cd], [1.3, 1.3], color="black", lw=1.5)
        ax.text(1 + cd / 2, 1.45, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=9)
        for n, group in enumerate(nemenyi_groups(avg, cd)):
            y = -0.25 - 0.22 * n
            ax.plot([avg[group[0]] - 0.03, avg[group[-1]] + 0.03], [y, y], color="black", lw=3.5)
    elif drawn:
        rank, cd = avg[control["control"]], control["cd"]
        ax.plot([max(1, rank - cd), min(k, rank + cd)], [-0.25, -0.25], color="black", lw=3.5)
        ax.text(rank, 1.2, f"Bonferroni-Dunn CD = {cd:.2f} around {control['control']}", ha="center",
                va="bottom", fontsize=9)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, out, dpi=150, bbox_inches="tight")
