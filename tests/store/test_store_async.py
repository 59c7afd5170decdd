"""AsyncStore: the Store API as coroutines, never blocking the event loop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from racefree import AsyncStore, ConflictError, Store


def test_async_api(tmp_path: Path) -> None:
    """Every call works as a coroutine and gives the same results as the sync Store."""

    async def main() -> None:
        store = await AsyncStore.open(tmp_path / "s", durable=False)
        async with store:
            assert await store.put("a", {"n": 1}) == 1
            assert await store.get("a") == {"n": 1}
            assert await store.getitem("a") == {"n": 1}
            with pytest.raises(KeyError):
                await store.getitem("nope")
            assert await store.update("a", lambda d: {"n": d["n"] + 1}) == {"n": 2}
            assert await store.update("c", lambda d: d, default={"c": 0}) == {"c": 0}
            with pytest.raises(ConflictError):
                await store.put("a", {}, expect_version=1)
            async with store.batch() as b:
                b.put("b", {"b": 1})
                b.delete("c")
            assert b.versions == {"b": 1, "c": 2}
            assert await store.keys() == ["a", "b"]
            assert await store.items() == [("a", {"n": 2}), ("b", {"b": 1})]
            assert await store.values() == [{"n": 2}, {"b": 1}]
            assert await store.count() == 2
            assert await store.contains("b") is True
            assert await store.version("a") == 2
            assert await store.delete("b") is True
            await store.compact()
            assert (await store.check()).documents == 1
        with pytest.raises(ValueError):
            await store.get("a")

    asyncio.run(main())


def test_async_write_waiting_for_the_lock_does_not_block_the_loop(tmp_path: Path) -> None:
    """While another thread holds the write lock (inside update), the loop keeps running
    other tasks, and the waiting put completes once the lock is released."""
    sync_store = Store(tmp_path / "s", durable=False)
    inside = threading.Event()
    release = threading.Event()

    def hold(doc: dict[str, Any]) -> dict[str, Any]:
        inside.set()
        assert release.wait(30)
        return doc

    sync_store.put("x", {})
    holder = threading.Thread(target=sync_store.update, args=("x", hold))
    holder.start()
    try:
        assert inside.wait(30)

        async def main() -> list[str]:
            store = AsyncStore(tmp_path / "s", durable=False)
            events: list[str] = []
            put = asyncio.ensure_future(store.put("y", {"y": 1}))
            for _ in range(3):
                await asyncio.sleep(0)
                events.append("tick")
            assert not put.done()
            release.set()
            assert await asyncio.wait_for(put, 30) == 1
            events.append("put done")
            assert await store.get("y") == {"y": 1}
            await store.close()
            return events

        assert asyncio.run(main()) == ["tick", "tick", "tick", "put done"]
    finally:
        release.set()
        holder.join(30)
        sync_store.close()


def test_async_wrap_shares_the_store(tmp_path: Path) -> None:
    """AsyncStore.wrap(store) uses the same open store: writes show on both sides."""
    with Store(tmp_path / "s", durable=False) as s:
        wrapped = AsyncStore.wrap(s)

        async def main() -> Any:
            await wrapped.put("a", {"via": "async"})
            return await wrapped.get("a")

        assert asyncio.run(main()) == {"via": "async"}
        assert s.get("a") == {"via": "async"}
