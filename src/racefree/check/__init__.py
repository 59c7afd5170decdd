"""``racefree check PATH``: find racefree's files under a path and verify each one.

Recognises stores, logs, lock files and JSON files by their contents, verifies
them without writing anything, and with ``repair=True`` repairs what a crash
can leave (a torn tail) under the file's own lock.

May import: the root modules, ``racefree.lock``, ``racefree.files``,
``racefree.log`` and ``racefree.store``.
"""
