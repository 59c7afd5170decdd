"""``racefree check PATH``: find racefree's files under a path and verify each one.

Recognises stores, logs, lock files and JSON files by their contents (and
skips every other file), verifies them without writing anything, and with
``repair=True`` repairs what a crash can leave (a torn tail) under the file's
own lock, and salvages a damaged store or log (every intact record kept, the
damaged files copied aside first).

May import: the root modules, ``racefree.lock``, ``racefree.lockfile``,
``racefree.files``, ``racefree.log`` and ``racefree.store``.
"""
