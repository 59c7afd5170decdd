"""JsonFile: no lost update across processes and threads; corrupt files never overwritten."""

from __future__ import annotations

import asyncio
import errno
import math
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import racefree
from racefree import CorruptFileError, DurabilityError, JsonFile, _fs


def temps(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".rftmp"))


class FailingFsync(_fs.FileSystem):
    def fsync(self, fd: int) -> None:
        raise OSError(errno.EIO, "injected fsync failure")

    fdatasync = fsync


# -- reading and writing -------------------------------------------------------


def test_missing_file_reads_a_fresh_copy_of_default(tmp_path: Path) -> None:
    """A missing file reads as a deep copy of default; mutating it changes nothing stored."""
    default = {"items": [], "meta": {"v": 1}}
    jf = JsonFile(tmp_path / "f.json", default=default)
    first = jf.read()
    assert first == {"items": [], "meta": {"v": 1}}
    first["items"].append(1)
    first["meta"]["v"] = 2
    assert jf.read() == {"items": [], "meta": {"v": 1}}
    assert default == {"items": [], "meta": {"v": 1}}
    with jf.edit() as data:
        data["items"].append("x")
    assert jf.read() == {"items": ["x"], "meta": {"v": 1}}
    assert JsonFile(tmp_path / "g.json").read() is None
    assert sorted(os.listdir(tmp_path)) == ["f.json", "f.json.lock"]


def test_write_read_exact_bytes(tmp_path: Path) -> None:
    """write() publishes indented UTF-8 JSON with a final newline; indent=None is compact."""
    path = tmp_path / "f.json"
    jf = JsonFile(path)
    jf.write({"a": [1, 2], "\u00e9": "\u00fc"})
    assert path.read_bytes() == (
        b'{\n  "a": [\n    1,\n    2\n  ],\n  "\xc3\xa9": "\xc3\xbc"\n}\n'
    )
    assert jf.read() == {"a": [1, 2], "\u00e9": "\u00fc"}
    JsonFile(path, indent=None).write({"a": [1, 2]})
    assert path.read_bytes() == b'{"a": [1, 2]}\n'
    assert temps(tmp_path) == []


def test_unserialisable_values_write_nothing(tmp_path: Path) -> None:
    """A value JSON cannot hold is TypeError/ValueError before anything is written;
    NaN and infinities are refused (allow_nan=False)."""
    path = tmp_path / "f.json"
    jf = JsonFile(path)
    jf.write({"ok": 1})
    before = path.read_bytes()
    with pytest.raises(TypeError, match="not JSON serializable"):
        jf.write({"x": object()})
    with pytest.raises(ValueError, match="JSON compliant"):
        jf.write([math.nan])
    with pytest.raises(ValueError, match="JSON compliant"):
        jf.update(lambda d: {**d, "inf": math.inf})
    with pytest.raises(TypeError, match="not JSON serializable"), jf.edit() as data:
        data["s"] = {1, 2}
    with pytest.raises(TypeError, match="not JSON serializable"):
        JsonFile(tmp_path / "g.json", default={"s": {1}})
    assert path.read_bytes() == before
    assert temps(tmp_path) == []


def test_update_returns_new_value_and_refuses_none(tmp_path: Path) -> None:
    """update() publishes and returns fn's result; a None result writes nothing."""
    path = tmp_path / "f.json"
    jf = JsonFile(path, default={"n": 0})
    assert jf.update(lambda d: {"n": d["n"] + 5}) == {"n": 5}
    before = path.read_bytes()
    with pytest.raises(TypeError, match="returned None"):
        jf.update(lambda d: d.update(n=99))
    assert path.read_bytes() == before
    jf.write(None)
    assert path.read_bytes() == b"null\n"
    assert jf.read() is None


def test_exception_in_edit_or_update_publishes_nothing(tmp_path: Path) -> None:
    """An exception inside edit()'s block or from update()'s fn leaves the file as it was."""
    path = tmp_path / "f.json"
    jf = JsonFile(path, default={"n": 0})
    jf.write({"n": 1})
    before = path.read_bytes()
    with pytest.raises(KeyError), jf.edit() as data:
        data["n"] = 2
        raise KeyError("boom")
    with pytest.raises(ZeroDivisionError):
        jf.update(lambda d: {"n": 1 / 0})
    assert path.read_bytes() == before
    assert temps(tmp_path) == []
    assert not jf.lock.locked


def test_nested_write_inside_edit_is_refused(tmp_path: Path) -> None:
    """A write of the same file from inside edit()/update() would be overwritten by the outer
    publish (a lost update): it raises RuntimeError instead, through any instance."""
    path = tmp_path / "f.json"
    jf, other = JsonFile(path, default={}), JsonFile(path, default={})
    with pytest.raises(RuntimeError, match="being edited"), jf.edit() as data:
        data["outer"] = 1
        other.write({"inner": 1})
    with pytest.raises(RuntimeError, match="being edited"):
        jf.update(lambda d: other.update(lambda e: e))
    assert not path.exists()
    with jf.lock:  # holding the lock to group calls is fine
        jf.write({"a": 1})
        jf.update(lambda d: {**d, "b": 2})
    assert jf.read() == {"a": 1, "b": 2}


def test_symlink_and_target_share_one_lock(tmp_path: Path) -> None:
    """A link and its target name one lock file, so updates through each exclude each other."""
    target = tmp_path / "real.json"
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert JsonFile(link).lock.path == JsonFile(target).lock.path == str(target) + ".lock"
    JsonFile(link, default={"n": 0}).update(lambda d: {"n": d["n"] + 1})
    assert link.is_symlink()
    assert target.read_bytes() == b'{\n  "n": 1\n}\n'


def test_jsonfile_pickles(tmp_path: Path) -> None:
    """A JsonFile can be sent to another process (it is rebuilt from its arguments)."""
    jf = JsonFile(tmp_path / "f.json", default={"n": 0}, durable=False, indent=None, timeout=3.0)
    copy = pickle.loads(pickle.dumps(jf))
    assert copy.path == jf.path
    assert copy.lock.path == jf.lock.path
    assert copy.lock.timeout == 3.0
    copy.write({"n": 1})
    assert (tmp_path / "f.json").read_bytes() == b'{"n": 1}\n'


# -- corruption (S3) ----------------------------------------------------------------

CORRUPT = [
    (b'{"a": 1,\n "b": }', "invalid JSON", 15, 2),
    (b'{"a": [1, 2', "invalid JSON", 11, 1),
    (b"", "the file is empty", 0, 1),
    (b"\x00" * 64, "invalid JSON", 0, 1),
    (b'{"a": "\xff"}', "not UTF-8", 7, None),
    (b'{"a": 1}{"b": 2}', "Extra data", 8, 1),
]


@pytest.mark.parametrize(("raw", "detail", "offset", "line"), CORRUPT)
def test_corrupt_file_raises_and_is_never_overwritten(
    tmp_path: Path, raw: bytes, detail: str, offset: int, line: int | None
) -> None:
    """read/update/edit of a damaged file raise CorruptFileError (path, byte offset, line);
    update's fn never runs, edit's block never runs, the bytes stay exactly as they were."""
    path = tmp_path / "f.json"
    path.write_bytes(raw)
    jf = JsonFile(path, default={})
    with pytest.raises(CorruptFileError, match=detail) as info:
        jf.read()
    assert (info.value.path, info.value.offset, info.value.line) == (str(path), offset, line)
    called: list[Any] = []

    def wipe(d: Any) -> Any:
        called.append(d)
        return {"wiped": True}

    with pytest.raises(CorruptFileError):
        jf.update(wipe)
    with pytest.raises(CorruptFileError), jf.edit() as data:
        called.append(data)
    with pytest.raises(CorruptFileError):
        asyncio.run(jf.aupdate(lambda d: {"wiped": True}))
    assert called == []
    assert path.read_bytes() == raw
    assert temps(tmp_path) == []


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    """A UTF-8 byte-order mark is not damage; offsets after it count its 3 bytes."""
    path = tmp_path / "f.json"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}')
    assert JsonFile(path).read() == {"a": 1}
    path.write_bytes(b'\xef\xbb\xbf{"a": }')
    with pytest.raises(CorruptFileError) as info:
        JsonFile(path).read()
    assert info.value.offset == 9


def test_fsync_failure_raises_and_refuses_further_writes(tmp_path: Path) -> None:
    """An fsync error is a DurabilityError, the old file stays, and this JsonFile refuses
    later writes (reads still work); a new JsonFile writes again."""
    path = tmp_path / "f.json"
    jf = JsonFile(path, default={})
    jf.write({"v": 1})
    before = path.read_bytes()
    with _fs.use(FailingFsync()), pytest.raises(DurabilityError) as info:
        jf.update(lambda d: {"v": 2})
    assert info.value.errno == errno.EIO
    assert path.read_bytes() == before
    with pytest.raises(DurabilityError, match="refuses further writes"):
        jf.write({"v": 3})
    assert jf.read() == {"v": 1}
    JsonFile(path).write({"v": 4})
    assert path.read_bytes() == b'{\n  "v": 4\n}\n'
    assert temps(tmp_path) == []


# -- no lost update (S1) ----------------------------------------------------------------

COUNTER_CHILD = r"""
import sys, threading, racefree
path, n, durable = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
jf = racefree.JsonFile(path, default={"count": 0}, durable=durable, indent=None)
def work(k):
    for i in range(n):
        if (i + k) % 2:
            jf.update(lambda d: {"count": d["count"] + 1})
        else:
            with jf.edit() as d:
                d["count"] += 1
threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
print("ready", flush=True)
sys.stdin.readline()  # the start barrier
for t in threads:
    t.start()
for t in threads:
    t.join()
print("done", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("processes", "per_thread", "durable"),
    [(8, 200, False), (2, 50, True)],
    ids=["fast", "durable"],
)
def test_counter_loses_no_update(
    tmp_path: Path, processes: int, per_thread: int, durable: bool
) -> None:
    """N processes x 4 threads x M increments (update and edit mixed), released together,
    end at exactly N*4*M: 8 x 4 x 200 = 6,400 without fsync, and a smaller durable run."""
    path = tmp_path / "counter.json"
    args = [str(path), str(per_thread), "1" if durable else "0"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", COUNTER_CHILD, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            assert (proc.returncode, out) == (0, "done\n")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
    assert JsonFile(path).read() == {"count": processes * 4 * per_thread}
    assert temps(tmp_path) == []


# -- asyncio -------------------------------------------------------------------------


def test_async_twins(tmp_path: Path) -> None:
    """aread/awrite/aupdate/aedit work, and 20 tasks x 10 updates keep all 200."""
    path = tmp_path / "f.json"
    jf = JsonFile(path, default={"n": 0}, durable=False)

    async def bump(k: int) -> None:
        for i in range(10):
            if (i + k) % 3 == 0:
                async with jf.aedit() as data:
                    data["n"] += 1
            elif (i + k) % 3 == 1:
                await jf.aupdate(lambda d: {"n": d["n"] + 1})
            else:

                async def add(d: Any) -> Any:
                    await asyncio.sleep(0)
                    return {"n": d["n"] + 1}

                await jf.aupdate(add)

    async def main() -> None:
        assert await jf.aread() == {"n": 0}
        await jf.awrite({"n": 0})
        await asyncio.gather(*(bump(k) for k in range(20)))
        assert await jf.aread() == {"n": 200}
        with pytest.raises(ValueError):
            async with jf.aedit() as data:
                data["n"] = -1
                raise ValueError("discard")

    asyncio.run(main())
    assert path.read_bytes() == b'{\n  "n": 200\n}\n'


def test_async_waiting_does_not_block_the_loop_and_cancel_writes_nothing(tmp_path: Path) -> None:
    """While a thread holds the lock, aupdate and aedit wait and the loop keeps running;
    cancelling a waiting aupdate writes nothing and leaves the lock free."""
    path = tmp_path / "f.json"
    jf = JsonFile(path, default={"n": 0})
    jf.write({"n": 0})
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with jf.lock:
            held.set()
            release.wait(30)  # the fallback only matters if the loop is (wrongly) blocked

    async def main() -> None:
        thread = threading.Thread(target=holder)
        thread.start()
        try:
            assert held.wait(60)
            cancelled = asyncio.create_task(jf.aupdate(lambda d: {"n": 1000}))
            waiting = [
                asyncio.create_task(jf.aupdate(lambda d: {"n": d["n"] + 1})),
            ]

            async def add_ten(d: Any) -> Any:
                return {"n": d["n"] + 10}

            waiting.append(asyncio.create_task(jf.aupdate(add_ten)))

            async def edit() -> None:
                async with jf.aedit() as data:
                    data["n"] += 100

            waiting.append(asyncio.create_task(edit()))
            for _ in range(50):  # the loop runs: these would not if a waiter blocked it
                await asyncio.sleep(0)
            assert not any(task.done() for task in [cancelled, *waiting])
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            assert path.read_bytes() == b'{\n  "n": 0\n}\n'
        finally:
            release.set()
            thread.join(60)
        await asyncio.wait_for(asyncio.gather(*waiting), 60)

    asyncio.run(main())
    assert JsonFile(path).read() == {"n": 111}
    assert not jf.lock.locked
    jf.update(lambda d: {"n": -1})
    assert jf.read() == {"n": -1}


class PausedReplace(_fs.FileSystem):
    """A rename that waits (in its worker thread) until the test lets it go on."""

    def __init__(self) -> None:
        self.entered, self.proceed = threading.Event(), threading.Event()

    def replace(self, src: str, dst: str) -> None:
        self.entered.set()
        if not self.proceed.wait(60):
            raise TimeoutError("the test never released the rename")
        super().replace(src, dst)


def test_cancel_during_publish_keeps_the_lock_until_the_write_lands(tmp_path: Path) -> None:
    """A task cancelled while its write runs in a worker thread keeps the lock until that
    write has landed (so no other writer can read the file before it), then raises
    CancelledError; the write is there and the lock is free."""
    path = tmp_path / "f.json"
    jf = JsonFile(path, default={"n": 0}, indent=None)
    jf.write({"n": 0})
    fs = PausedReplace()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(jf.awrite({"n": 1}))
        assert await loop.run_in_executor(None, fs.entered.wait, 60)
        task.cancel()
        for _ in range(20):
            await asyncio.sleep(0)
        assert not task.done()
        assert jf.lock.locked  # still held by the cancelled task, under the write in flight
        assert path.read_bytes() == b'{"n": 0}\n'
        fs.proceed.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    with _fs.use(fs):
        asyncio.run(main())
    assert path.read_bytes() == b'{"n": 1}\n'
    assert not jf.lock.locked
    assert temps(tmp_path) == []


def test_lazy_export() -> None:
    """JsonFile is racefree's public name for this class."""
    assert racefree.JsonFile is JsonFile
