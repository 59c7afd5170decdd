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

Each record is written whole (one ``write(2)`` under an exclusive ``flock`` of a
sidecar lock file ``.app.log.lock``), none is lost at rotation, and a file is
rotated once per threshold, by one process. See ``docs/logging.md``.

Modules: ``handler`` (what both handlers share: the shared file, its sidecar
lock and rotation), ``rotating``, ``timed``, ``finish`` (work done after a
rotation: pruning, compression) and ``compress``.

May import: the root modules only.
"""

from __future__ import annotations

from racefree.logging.handler import Durable
from racefree.logging.rotating import RotatingFileHandler
from racefree.logging.timed import TimedRotatingFileHandler

__all__ = ["Durable", "RotatingFileHandler", "TimedRotatingFileHandler"]
