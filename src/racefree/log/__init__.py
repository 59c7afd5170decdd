"""The log layer: :class:`racefree.AppendLog`, an append-only log of JSON records.

Promises: each record (or batch) is appended whole, checksummed and, by
default, durable when the call returns; a torn tail left by a crash is
invisible and repaired, while damage before good records is reported as
corruption; compaction into a snapshot never loses an append that lands
meanwhile.

Modules: ``frame`` (one record per line: length, CRC-32, body), ``scan`` (the
segment and snapshot format, and reading it), ``appendlog`` (``AppendLog``).

May import: the root modules, ``racefree.lock`` and ``racefree.files``.
"""
