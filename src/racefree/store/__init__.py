"""The store layer: :class:`racefree.Store` and :class:`racefree.AsyncStore`.

A log-structured JSON document store in a directory that many threads and
processes share. Promises: each put, delete or batch is one checksummed
record, so a crash leaves all of it or none; durable by default (writers share
fdatasyncs: group commit); a ``get`` sees every write acknowledged before it
began, in any process; ``update`` is a locked read-modify-write; compaction
never brings a deleted id back.

Modules: ``segment`` (the record format), ``files`` (the store's files:
segments, MANIFEST, the shared header), ``index`` (building and catching up a
process's index), ``handle`` (opening, locks, refreshing), ``core`` (the write
path and group commit), ``compact`` (compaction and verification), ``batch``,
``store`` (the API) and ``asyncstore``.

May import: the root modules, ``racefree.storeapi``, ``racefree.files`` and
``racefree.lock``.
"""
