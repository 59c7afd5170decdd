"""Group commit across processes: no durable put returns before an fdatasync covers it.

Writers in several processes share fdatasyncs (``store.commit``): one leader syncs for
all, after waiting briefly for the writers of the last group. Each writer here records,
at the file-system seam, when each of its segment writes ended and when each
fdatasync started and ended (``CLOCK_MONOTONIC``, one clock for every process), and
when each put returned with the end of its record. Every acknowledged put must be
covered by an fdatasync of its segment, in any process, that started after its record
was written and ended before the put returned.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from helpers.testkit import reap

from racefree import Store

WRITER = textwrap.dedent(
    """
    import json, os, sys, time
    from racefree import Store, _fs
    path, log, w, count, go = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    events = []
    now = time.monotonic_ns

    def seg(fd):
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        return int(name[4:12]) if name.startswith("seg-") else -1

    class Recording(_fs.FileSystem):
        def pwrite(self, fd, data, offset):
            n = super().pwrite(fd, data, offset)
            if bytes(data[:4]) == b"RFR1":  # a record (not a new segment's zeros)
                events.append(["w", seg(fd), offset + n, now()])
            return n

        def fdatasync(self, fd):
            start = now()
            super().fdatasync(fd)
            events.append(["s", seg(fd), start, now()])

    s = Store(path, durable=True)
    with _fs.use(Recording()):
        while not os.path.exists(go):  # a start line: every writer is open and ready
            time.sleep(0.001)
        for i in range(count):
            s.put(f"{w}-{i % 5}", {"w": w, "i": i, "pad": "x" * 300})
            end = s._core.state.end
            events.append(["ack", end >> 40, end & ((1 << 40) - 1), now()])
    s.close()
    with open(log, "w") as f:
        json.dump(events, f)
    """
)


def test_no_durable_put_returns_before_an_fdatasync_covers_it(tmp_path: Path) -> None:
    """Three durable writer processes, 150 puts each: every put that returned was covered
    by an fdatasync of its segment that began after its record's write and ended before
    the put returned; and the fdatasyncs were shared (fewer than the puts)."""
    path = tmp_path / "s"
    Store(path, _segment_size=64 << 10).close()  # a small first segment: rolls happen too
    go = tmp_path / "go"
    logs = [tmp_path / f"log{w}.json" for w in range(3)]
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(log), str(w), "150",
                          str(go)])
        for w, log in enumerate(logs)
    ]
    try:
        go.touch()
        assert [p.wait(timeout=240) for p in procs] == [0, 0, 0]
    finally:
        reap(procs)
    events = [e for log in logs for e in json.loads(log.read_text())]
    writes = {(e[1], e[2]): e[3] for e in events if e[0] == "w"}
    syncs = [(e[1], e[2], e[3]) for e in events if e[0] == "s"]
    acks = [(e[1], e[2], e[3]) for e in events if e[0] == "ack"]
    assert len(acks) == 450
    uncovered = []
    for seg, end, acked in acks:
        written = writes[(seg, end)]
        if not any(s == seg and start >= written and done <= acked for s, start, done in syncs):
            uncovered.append((seg, end))
    assert uncovered == []
    assert len([s for s in syncs if s[0] >= 0]) < 450  # writers shared fdatasyncs
    with Store(path) as s:
        assert len(s) == 15
