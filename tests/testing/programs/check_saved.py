"""The check for the save programs: data.json is whole, and at least the last version the
program reported saved (from RACEFREE_CRASH_OUTPUT). usage: python check_saved.py STATE"""

import json
import os
import sys

state = sys.argv[1]
with open(os.environ["RACEFREE_CRASH_OUTPUT"], encoding="utf-8") as f:
    saved = [int(line.split()[1]) for line in f.read().splitlines() if line.startswith("saved")]
path = os.path.join(state, "data.json")
try:
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
except FileNotFoundError:
    sys.exit("data.json is missing (it existed before the program ran)")
except ValueError as exc:
    sys.exit(f"data.json is damaged: {exc}")
if doc["items"] != [f"item {k}" for k in range(40 * doc["version"])]:
    sys.exit(f"version {doc['version']} is not whole")
if saved and doc["version"] < saved[-1]:
    sys.exit(f"version {doc['version']} found, but version {saved[-1]} had been saved")
