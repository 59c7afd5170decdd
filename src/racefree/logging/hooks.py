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
_FILTER = _stdlib_logging.Filterer.filter


class StdlibHooks:
    """The hooks a handler's class or instance replaces, judged again when the instance changes."""

    _custom_should: bool
    _custom_do: bool
    _own_filter: bool
    _own_format: bool
    #: The size of the instance ``__dict__`` when the hooks were last judged.
    _ndict: int

    def _hooks(self) -> None:
        """Which of the stdlib's hooks this handler replaces, on its class or on itself.

        A subclass, or code that sets a method on the instance, may decide
        (``shouldRollover``) or wrap (``doRollover``) rotations, filter or
        format, as with the stdlib. Judged again whenever the instance's
        ``__dict__`` changes size (a method set on the instance adds an entry).
        """
        mine = vars(self)
        self._custom_should = self._overridden("shouldRollover") or "shouldRollover" in mine
        self._custom_do = self._overridden("doRollover") or "doRollover" in mine
        own = getattr(type(self), "filter", _FILTER) is not _FILTER
        self._own_filter = own or "filter" in mine
        self._own_format = _HANDLER_FORMAT is None or "format" in mine
        self._ndict = len(mine)  # last: every attribute above exists by now

    @classmethod
    def _overridden(cls, name: str) -> bool:
        """Whether a class outside racefree defines method ``name`` for this handler."""
        for klass in cls.__mro__:
            if name in vars(klass):
                return not klass.__module__.startswith("racefree.")
        return False  # pragma: no cover - SharedFileHandler defines every name asked about
