"""The store layer: :class:`racefree.Store` and :class:`racefree.AsyncStore`.

A log-structured JSON document store in a directory that many threads and
processes share. Promises: each put, delete or batch is one checksummed
record, so a crash leaves all of it or none; durable by default (writers share
fdatasyncs: group commit); a ``get`` sees every write acknowledged before it
began, in any process; ``update`` is a locked read-modify-write; compaction
never brings a deleted id back.

Against other local users (``docs/security.md``): every file of the store is
opened under racefree's trust rule (never through a link, a FIFO or a device,
never another user's file in a shared directory), a file cut short while in use
is ``CorruptFileError`` (never a SIGBUS), and ``readonly=True`` serves a user who
may only read the directory.

Modules: ``segment`` (the record format), ``owned`` (opening, reading and
replacing the store's files under the trust rule), ``files`` (segments,
MANIFEST, the poison marker), ``header`` (the shared header: mapped or read with
pread), ``locks`` (the per-process lock state that every handle on a directory
shares), ``cache`` (each handle's bounded cache of decoded documents),
``index`` (building and catching up a process's index), ``handle`` (opening,
refreshing, read-only handles, fork), ``commit`` (group commit), ``core`` (the
write path), ``compact`` (compaction and verification), ``batch``, ``reads``
(the read calls), ``store`` (the API) and ``asyncstore``.

May import: the root modules, ``racefree.storeapi``, ``racefree.files`` and
``racefree.lock``.
"""
