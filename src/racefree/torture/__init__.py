"""``racefree torture DIR``: checks racefree's guarantees on a user's own file system.

Probes what the file system offers (``probe``), runs worker processes that
write through every layer while SIGKILLs land at random (``run``,
``worker``), then checks that every acknowledged write is there and every file
opens (``verify``). ``display`` is the optional rich progress display.

May import: every library layer and the public ``racefree`` package (it is a
user of them all).
"""
