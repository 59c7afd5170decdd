"""Logging handlers that any number of processes and threads can share: :mod:`racefree.logging`.

Drop-in replacements for :class:`logging.handlers.RotatingFileHandler` and
:class:`logging.handlers.TimedRotatingFileHandler` (same arguments, same backup
names, usable from :func:`logging.config.dictConfig`), for gunicorn workers,
``multiprocessing`` pools (fork or spawn) and anything else that writes one log
file from several processes at once::

    import logging
    from racefree.logging import RotatingFileHandler

    handler = RotatingFileHandler("app.log", max_bytes=5_000_000, backup_count=5)
    logging.getLogger().addHandler(handler)

Each record is written whole (one ``write(2)`` holding a shared ``flock`` of a
sidecar lock file ``.app.log.lock``, which a rotation holds exclusively), none
is lost at rotation, and a file is rotated once per threshold, by one process.
See ``docs/logging.md``.

Modules: ``handler`` (what both handlers share: the write path), ``sidecar``
(the lock file and its control block), ``opening`` (opening the log under the
trust rule), ``sole`` (the only writer counts its bytes), ``stream`` (the
``handler.stream`` object), ``formatting`` (a record's text and bytes, its
time text reused), ``hooks`` (the standard hooks a user replaced),
``rotation`` (the steps every rotation takes), ``rotating``, ``timed``,
``finish`` (work done after a rotation: pruning, compression) and ``compress``.

May import: the root modules only.
"""

from __future__ import annotations

from racefree.logging.handler import Durable
from racefree.logging.rotating import RotatingFileHandler
from racefree.logging.timed import TimedRotatingFileHandler

__all__ = ["Durable", "RotatingFileHandler", "TimedRotatingFileHandler"]
