"""The seed's document store, ported to Python as a benchmark peer (not for use).

The seed's ``ConversationStore`` keeps every document in one JSON file: ``save``
reads the whole file, sets one entry and writes the whole file back in place
(no temp file, no fsync); ``get`` reads and parses the whole file; its lock is
process-local. A corrupt or missing file reads as empty (pitfall S3). Its cost
per operation grows with the number of documents.
"""

from __future__ import annotations

import json
import threading
from typing import Any


class SeedStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()  # process-local, as in the seed

    def _read_all(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except (FileNotFoundError, ValueError):
            return {}  # the seed's readAll: a corrupt file is "empty" (S3)
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> Any:
        return self._read_all().get(key)

    def save(self, key: str, doc: dict[str, Any]) -> None:
        with self._lock:
            data = self._read_all()
            data[key] = doc
            with open(self.path, "w", encoding="utf-8") as f:
                json.dump(data, f)

    def list(self) -> list[str]:
        return list(self._read_all())

    def delete(self, key: str) -> bool:
        with self._lock:
            data = self._read_all()
            if key not in data:
                return False
            del data[key]
            with open(self.path, "w", encoding="utf-8") as f:
                json.dump(data, f)
            return True

    def close(self) -> None:
        pass
