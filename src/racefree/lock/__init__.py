"""The lock layer: :class:`racefree.FileLock`, one lock for threads, asyncio tasks and processes.

Promises: one holder at a time (or many readers with ``shared=True``) among
every thread, task and process on one host, on any number of instances of one
file; a killed holder's lock is freed by the kernel at once; waiters block in
the kernel (no polling); a timeout or a cancellation leaves nothing held; a
forked child never releases what its parent holds.

Modules: ``filelock`` (the API and the uncontended fast paths), ``registry``
(the per-process state of each lock file), ``wait`` (waiting), ``worker`` and
``request`` (the abandonable kernel waits behind timeouts and asyncio),
``create`` (a lock file's missing directories and its ``mode=``), ``api``
(what every lock of racefree shares, ``LockFile`` and ``PgLock`` included:
``with``, ``async with``, the ``Acquired`` that ``acquire()`` returns).

May import: the root modules (``_errors``, ``_fs``, ``_trust``, ``_fork``) only.
"""
