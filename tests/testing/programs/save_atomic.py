"""The same saves with racefree.atomic_write. usage: python save_atomic.py DIR COUNT"""

import json
import os
import sys

from racefree import atomic_write

directory, count = sys.argv[1], int(sys.argv[2])
target = os.path.join(directory, "data.json")
for i in range(1, count + 1):
    doc = {"version": i, "items": [f"item {k}" for k in range(40 * i)]}
    atomic_write(target, json.dumps(doc).encode())
    print(f"saved {i}", flush=True)
