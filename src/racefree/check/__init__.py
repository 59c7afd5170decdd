"""``racefree check PATH``: find racefree's files under a path and verify each one.

Recognises stores, logs, lock files and JSON files by their contents (and
skips every other file), verifies them without writing anything, and with
``repair=True`` repairs what a crash can leave (a torn tail) under the file's
own lock, and salvages a damaged store or log (every intact record kept, the
damaged files copied aside first). It reads nothing another user planted in a
shared directory, descends into no directory another user owns, and repairs
only where nobody but the caller or root can change anything.

Modules: ``checker`` (the walk, stores, JSON and lock files), ``logs`` (logs,
damaged headers included, and their repairs) and ``report`` (``Found``, and
where a repair may write).

May import: the root modules, ``racefree.lock``, ``racefree.lockfile``,
``racefree.files``, ``racefree.log`` and ``racefree.store``.
"""
