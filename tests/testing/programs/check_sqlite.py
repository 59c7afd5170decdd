"""The check for the sqlite3 shell run: integrity_check is ok, and the rows are exactly
1..n, with n at least the number of inserts the shell had reported committed.
usage: python check_sqlite.py STATE ROWS"""

import os
import sqlite3
import sys

state, rows = sys.argv[1], int(sys.argv[2])
with open(os.environ["RACEFREE_CRASH_OUTPUT"], encoding="utf-8") as f:
    committed = sum(1 for line in f.read().splitlines() if line.startswith("committed"))
db = sqlite3.connect(os.path.join(state, "rows.db"))
try:
    (verdict,) = db.execute("PRAGMA integrity_check").fetchone()
    ids = [i for (i,) in db.execute("SELECT i FROM t ORDER BY i")]
    bad = [i for (i,) in db.execute("SELECT i FROM t WHERE v != printf('%.3000c', char(96 + i))")]
finally:
    db.close()
if verdict != "ok":
    sys.exit(f"integrity_check: {verdict}")
if ids != list(range(1, len(ids) + 1)) or not committed <= len(ids) <= rows or bad:
    sys.exit(f"rows {ids} (bad {bad}) after {committed} reported committed")
