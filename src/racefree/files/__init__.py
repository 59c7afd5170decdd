"""The files layer: :func:`racefree.atomic_write`, :func:`racefree.atomic_open`,
:func:`racefree.sweep` and :class:`racefree.JsonFile`.

Promises: a reader or a crash sees a file's old contents or its new ones, never
a mix, a torn or an empty file; when a durable write returns, it survives a
power loss (the temp file and then its directory are fsynced); a JSON file's
updates are locked read-modify-writes, so none is lost, and a corrupt file
raises instead of being read as empty.

Modules: ``atomic`` (the temp-file, fsync, rename, fsync protocol), ``sweep``
(removing the temps of killed writers), ``jsontext`` (a JSON file's text: every
failure to read or write it typed) and ``jsonfile`` (``JsonFile``).

May import: the root modules and ``racefree.lock``.
"""
