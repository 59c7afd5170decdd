"""The log layer: :class:`racefree.AppendLog`, an append-only log of JSON records.

Promises: each record (or batch) is appended whole, checksummed and, by
default, durable when the call returns; a torn tail left by a crash is
invisible and repaired, while damage before good records is reported as
corruption; compaction into a snapshot never loses an append that lands
meanwhile.

Modules: ``frame`` (one record per line: length, CRC-32, body), ``scan`` (the
segment and snapshot format, and reading it), ``locking`` (the writers' lock,
closed to users who may only read), ``appendlog`` (``AppendLog``) and
``salvage`` (what ``racefree check --repair`` keeps of a damaged log).

May import: the root modules, ``racefree.lock`` and ``racefree.files``.
"""
