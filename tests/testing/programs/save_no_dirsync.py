"""Saves a JSON document: temp file, fsync of the file, rename; but no fsync of the directory.

usage: python save_no_dirsync.py DIR COUNT
"""

import json
import os
import sys

directory, count = sys.argv[1], int(sys.argv[2])
target = os.path.join(directory, "data.json")
for i in range(1, count + 1):
    doc = {"version": i, "items": [f"item {k}" for k in range(40 * i)]}
    tmp = target + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    print(f"saved {i}", flush=True)
