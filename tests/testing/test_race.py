"""racefree.testing.race: real processes, threads and tasks released together, bounded, reaped.

The first tests are the documentation's example: ten concurrent saves of one
conversation through the usual read-modify-write lose updates under ``race``;
the same saves through ``JsonFile.update`` and ``Store.update`` lose none.
"""

from __future__ import annotations

import asyncio
import errno
import json
import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from racefree import JsonFile, Store
from racefree.testing import RaceResult, race

SAVES = 10  # concurrent callers
ROUNDS = 8  # rounds of SAVES saves each


def _message() -> str:
    """A message no other call writes: which process, thread and instant wrote it."""
    return f"{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"


def naive_save(path: str) -> str:
    """The usual code: read the conversation, append a message, write it back.

    The write is even atomic (a unique temp file renamed over the target), so
    the file is always whole; what it lacks is a lock around the read and the write.
    """
    with open(path, encoding="utf-8") as f:
        conversation = json.load(f)
    message = _message()
    conversation["messages"].append(message)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(conversation, f)
    os.replace(tmp, path)
    return message


def jsonfile_save(path: str) -> str:
    message = _message()
    JsonFile(path).update(lambda c: {**c, "messages": [*c["messages"], message]})
    return message


def store_save(directory: str) -> str:
    message = _message()
    with Store(directory) as store:
        store.update("conv-1", lambda c: {**c, "messages": [*c["messages"], message]})
    return message


def _saved(result: RaceResult, messages: list[str]) -> tuple[int, int]:
    """(messages kept, messages lost), checking every kept one was returned by a call."""
    result.raise_errors()
    returned = result.values
    assert len(returned) == SAVES * ROUNDS == len(set(returned))
    assert set(messages) <= set(returned) and len(messages) == len(set(messages))
    return len(messages), len(returned) - len(messages)


def test_naive_read_modify_write_loses_updates(tmp_path: Path) -> None:
    """Ten processes saving at once, eight rounds: the naive save loses updates every time."""
    path = tmp_path / "conversation.json"
    path.write_text(json.dumps({"messages": []}), encoding="utf-8")
    result = race(naive_save, str(path), processes=SAVES, rounds=ROUNDS, timeout=120)
    kept, lost = _saved(result, json.loads(path.read_text(encoding="utf-8"))["messages"])
    print(f"naive save: {kept} kept, {lost} lost of {SAVES * ROUNDS}")
    assert lost > 0


def test_jsonfile_update_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "conversation.json"
    JsonFile(path).write({"messages": []})
    result = race(jsonfile_save, str(path), processes=SAVES, rounds=ROUNDS, timeout=120)
    kept, lost = _saved(result, JsonFile(path).read()["messages"])
    assert (kept, lost) == (SAVES * ROUNDS, 0)


def test_store_update_loses_nothing(tmp_path: Path) -> None:
    with Store(tmp_path / "store") as store:
        store.put("conv-1", {"messages": []})
    result = race(store_save, str(tmp_path / "store"), processes=SAVES, rounds=ROUNDS,
                  timeout=120)
    with Store(tmp_path / "store") as store:
        kept, lost = _saved(result, store["conv-1"]["messages"])
    assert (kept, lost) == (SAVES * ROUNDS, 0)


# --------------------------------------------------------------------------- the mechanics
async def whoami(tag: str) -> tuple[str, int, int]:
    await asyncio.sleep(0)
    return tag, os.getpid(), threading.get_ident()


def test_processes_threads_tasks_and_rounds(tmp_path: Path) -> None:
    """2 processes x 3 threads x 4 tasks x 2 rounds: 48 calls, one per (p, t, k, r), each in
    the process and thread its record names; a round starts only when the last ended."""
    result = race(whoami, "x", processes=2, threads=3, tasks=4, rounds=2, timeout=120)
    result.raise_errors()
    grid = sorted((c.process, c.thread, c.task, c.round) for c in result.calls)
    assert grid == [(p, t, k, r) for p in range(2) for t in range(3) for k in range(4)
                    for r in range(2)]
    assert all(c.value[0] == "x" and c.start <= c.end for c in result.calls)
    pids = {c.process: set() for c in result.calls}
    threads: dict[tuple[int, int], set[int]] = {}
    for c in result.calls:
        pids[c.process].add(c.value[1])
        threads.setdefault((c.process, c.thread), set()).add(c.value[2])
    assert all(len(v) == 1 for v in pids.values()) and len({*map(min, pids.values())}) == 2
    assert os.getpid() not in {min(v) for v in pids.values()}
    assert all(len(v) == 1 for v in threads.values())
    # The barrier: every call of round 0 ended before any call of round 1 started.
    first = [c for c in result.calls if c.round == 0]
    second = [c for c in result.calls if c.round == 1]
    assert max(c.end for c in first) <= min(c.start for c in second)


def fail_on(value: int, bad: int) -> int:
    if value == bad:
        raise ValueError(f"bad value {value}")
    return value * 2


class Unpicklable(Exception):
    def __reduce__(self) -> Any:
        raise TypeError("not picklable")


def raise_unpicklable() -> None:
    raise Unpicklable("x")


def test_errors_are_recorded_not_raised() -> None:
    good = race(fail_on, 3, 4, processes=2, timeout=120)
    assert good.values == [6, 6] and good.errors == []
    bad = race(fail_on, 4, 4, processes=2, rounds=2, timeout=120)
    assert bad.values == [] and len(bad.errors) == 4
    assert all(isinstance(e, ValueError) and str(e) == "bad value 4" for e in bad.errors)
    assert all("fail_on" in (c.traceback or "") for c in bad.calls)
    with pytest.raises(ValueError, match="bad value 4"):
        bad.raise_errors()
    odd = race(raise_unpicklable, processes=1, timeout=120)
    assert len(odd.errors) == 1 and isinstance(odd.errors[0], RuntimeError)
    assert "Unpicklable" in str(odd.errors[0])


def block_forever() -> None:
    threading.Event().wait()


def test_timeout_kills_and_reaps_every_process() -> None:
    before = set(multiprocessing.active_children())  # other tests' children are not ours
    with pytest.raises(TimeoutError, match="2 of 2 processes had not finished"):
        race(block_forever, processes=2, timeout=3)
    assert set(multiprocessing.active_children()) - before == set()


def first_one_dies(marker: str) -> str:
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except OSError as exc:
        assert exc.errno == errno.EEXIST
        return "alive"
    os.close(fd)
    os._exit(3)


def test_a_process_that_dies_is_reported(tmp_path: Path) -> None:
    """One of three processes exits in its first call: its 2 calls (one per round) are a
    ChildProcessError each; the others' second round cannot start, and says so."""
    before = set(multiprocessing.active_children())  # other tests' children are not ours
    result = race(first_one_dies, str(tmp_path / "m"), processes=3, rounds=2, timeout=120)
    assert len(result.calls) == 6
    died = {c.process for c in result.calls if "exit code 3" in str(c.error)}
    assert len(died) == 1
    assert sorted(c.round for c in result.calls if c.process in died) == [0, 1]
    others = [c for c in result.calls if c.process not in died]
    assert [c.value for c in others if c.round == 0] == ["alive", "alive"]
    assert all(isinstance(c.error, ChildProcessError) for c in others if c.round == 1)
    assert set(multiprocessing.active_children()) - before == set()


def plain(x: int) -> int:
    return x


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="coroutine"):
        race(plain, 1, tasks=2)
    with pytest.raises(ValueError, match="processes"):
        race(plain, 1, processes=0)
    with pytest.raises(ValueError, match="timeout"):
        race(plain, 1, timeout=float("nan"))
    with pytest.raises(TypeError, match="must pickle"):
        race(lambda: 1)
