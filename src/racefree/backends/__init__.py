"""Choosing a backend: :func:`racefree.open_store`, :func:`racefree.open_lock`.

One call that takes a path (the file store, ``FileLock``) or a
``postgresql://`` URL (``PgStore``, ``PgLock``) and returns an object with the
same API, so application code written against one runs on the other.

May import: the root modules, ``racefree.storeapi``, ``racefree.lock``,
``racefree.store`` and ``racefree.pg`` (the last two only inside the call that
needs them, so that a program using one backend never loads the other).
"""
