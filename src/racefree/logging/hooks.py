"""Which of the standard library's handler hooks a racefree handler's user replaced.

A mixin of :class:`racefree.logging.handler.SharedFileHandler`. The standard
handlers call ``filter``, ``format``, ``shouldRollover`` and ``doRollover``
through the instance, so a subclass or a method set on the instance replaces
them. racefree's write path skips the standard ones' frames where that changes
nothing, so it must know which were replaced, on the class or on the instance,
and notice when one is set later. May import the formatting module only.
"""

from __future__ import annotations

import logging as _stdlib_logging

from racefree.logging.formatting import standard

__all__ = ["StdlibHooks"]

#: ``logging.Handler.format`` as the standard library defines it (None if it was
#: replaced before racefree was imported): a handler whose format is this one is
#: formatted without the extra frame.
_HANDLER_FORMAT = standard(_stdlib_logging.Handler, "format")
#: ``logging.Filterer.filter`` as the standard library defines it (None if it was
#: replaced before racefree was imported: then it is always called).
_FILTER = standard(_stdlib_logging.Filterer, "filter")


class StdlibHooks:
    """The hooks a handler's class replaces (judged once); the instance's, at each record."""

    #: The class's ``shouldRollover`` when it was judged racefree's own (None: it was
    #: the user's, which always decides); replaced since, the replacement decides. A
    #: method set on the instance is looked for at each record.
    _should_fn: object

    def _hooks(self) -> None:
        """Judge the class's hooks (at construction).

        A subclass may decide (``shouldRollover``) or wrap (``doRollover``)
        rotations, as with the stdlib; so may a function set on racefree's
        class, or on the instance at any time (``mock.patch.object``): the write
        path looks for ``filter``, ``format`` and ``shouldRollover`` in the
        instance's ``__dict__`` at each record, compares the class's ``filter``,
        ``format`` and ``shouldRollover`` with the standard ones (or the one
        judged here), and judges ``doRollover`` at each rotation.
        """
        self._should_fn = (None if self._overridden("shouldRollover")
                           else getattr(type(self), "shouldRollover", None))

    @classmethod
    def _overridden(cls, name: str) -> bool:
        """Whether ``name``, as the class finds it, is a function from outside racefree."""
        for klass in cls.__mro__:
            fn = vars(klass).get(name)
            if fn is not None:
                return not str(getattr(fn, "__module__", "")).startswith("racefree.")
        return False  # pragma: no cover - SharedFileHandler defines every name asked about
