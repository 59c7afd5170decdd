"""Drop-in modules for programs written for filelock, fasteners and atomicwrites.

Changing the import line moves a program over::

    from racefree.compat import filelock        # was: import filelock
    from racefree.compat import fasteners       # was: import fasteners
    from racefree.compat import atomicwrites    # was: import atomicwrites

Each module has its peer's public names and argument conventions for the
common idioms (see each module's docstring for the list), built on racefree's
own locks and atomic files, so the program gets racefree's guarantees: waiting
in the kernel instead of polling, exclusion between threads and asyncio tasks
as well as processes, fork safety, kept file modes, durable writes. Where
racefree keeps a different semantic on purpose (ownership per thread or task
rather than per object, for one), the module says so; it never accepts an
argument whose promise it would not keep. ``docs/migrating.md`` has each peer
side by side with racefree's own API, and what a mixed fleet does during a
rolling migration.

The compat layer: it may import every library layer; nothing in the library
imports it.
"""
