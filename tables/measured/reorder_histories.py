"""Put merged runs' histories back in training order (bench merge before 121351c copied them in
stage-name order). Stage orders from the methods' code: CurveNet probe -> allocate; O2U-Net
pretrain -> cyclic -> retrain; the others are already in order (one stage, or AUM's names)."""
import sqlite3
import sys

ORDER = {"curvenet": ["probe", "allocate"], "o2u": ["pretrain", "cyclic", "retrain"]}
for path in sys.argv[1:]:
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("BEGIN IMMEDIATE")
    moved = 0
    for key, method in c.execute("SELECT key, method FROM runs").fetchall():
        rows = c.execute("SELECT run_key, stage, epoch, metrics_json FROM epochs WHERE run_key = ? ORDER BY rowid",
                         (key,)).fetchall()
        order = ORDER.get(method)
        if not order or not rows:
            continue
        assert {r[1] for r in rows} <= set(order), (key, method, {r[1] for r in rows})
        fixed = sorted(rows, key=lambda r: (order.index(r[1]), r[2]))
        if fixed != rows:
            c.execute("DELETE FROM epochs WHERE run_key = ?", (key,))
            c.executemany("INSERT INTO epochs VALUES (?, ?, ?, ?)", fixed)
            moved += 1
    c.execute("COMMIT")
    c.execute("VACUUM")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    print(path, moved, "runs reordered")
