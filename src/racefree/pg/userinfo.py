"""The user part of a ``postgresql://`` URL, however its password was spelled.

A password typed into a URL without percent-encoding may hold ``/``, ``?``, ``#``
or ``@``, which end the user part for a URL parser: ``urllib`` ends the
authority at the first ``/``, ``?`` or ``#`` (``app:hun/ter2@host`` has no user
part for it, and a port ``hun``), libpq ends the user part at the first ``@``
(``app:p@ss@host`` has the password ``p`` for it, and the host ``ss@host``).
Each reading puts part of the password where messages quote it (a port, a host, a
database name). The writer meant the user part to run from ``://`` to the ``@``
before the host, so:

- :func:`intended` finds that ``@``: the first one, not inside a nested URL, that
  is followed by a host list (``host``, ``host:port``, ``[ipv6]``, comma-separated)
  and then ``/``, ``?``, ``#`` or the end;
- :func:`candidate_passwords` gives the password of every reading a parser might
  make (each ``@`` that may end the user part, and libpq's), so that scrubbing
  removes them all, whichever one a message quotes;
- :func:`encode` percent-encodes a user part, so that libpq reads exactly it.
"""

from __future__ import annotations

import re
import urllib.parse

__all__ = ["candidate_passwords", "encode", "host_list", "intended"]

# One host: an IPv6 literal in brackets, or a name/IPv4 without delimiters; a port.
_HOST = r"(?:\[[^\]/?#@\s]*\]|[^\[\]:/?#@,\s]*)(?::\d*)?"
_HOSTS = re.compile(rf"{_HOST}(?:,{_HOST})*")
_END = re.compile(r"[/?#]")


def host_list(text: str) -> bool:
    """Whether ``text`` is a host list libpq accepts the shape of (ports all digits)."""
    return _HOSTS.fullmatch(text) is not None


def _ends(rest: str) -> list[int]:
    """Every ``@`` of ``rest`` (a URL after ``://``) that may end its user part."""
    nested = rest.find("://")
    stop = len(rest) if nested < 0 else nested
    found = []
    at = rest.find("@", 0, stop)
    while at >= 0:
        end = _END.search(rest, at + 1)
        host = rest[at + 1 : end.start() if end else len(rest)]
        if host_list(host):
            found.append(at)
        at = rest.find("@", at + 1, stop)
    return found


def intended(rest: str) -> tuple[str, str] | None:
    """``(user part, the rest from the host on)`` as the writer meant it; None if none.

    ``rest`` is the URL after ``://``.
    """
    ends = _ends(rest)
    if not ends:
        return None
    return rest[: ends[0]], rest[ends[0] + 1 :]


def candidate_passwords(rest: str) -> list[str]:
    """The password of every reading of ``rest``'s user part (raw, as spelled).

    One per ``@`` that may end the user part (a user name holds no ``/``, ``?``,
    ``#`` or ``@``: readings that would put one there are left out). libpq's own
    reading (the user part ends at the first ``@``) needs none: ``parse_url``
    hands libpq the user part percent-encoded, so libpq never reads a piece of it.
    """
    found = []
    for at in _ends(rest):
        user, sep, password = rest[:at].partition(":")
        if sep and password and not re.search(r"[/?#@]", user):
            found.append(password)
    return found


def encode(userinfo: str) -> str:
    """``userinfo`` with its user and password percent-encoded (their meaning unchanged).

    What is percent-encoded already stays so; a raw ``/``, ``?``, ``#``, ``@``
    or ``%`` (one not followed by two hex digits) is encoded.
    """
    user, sep, password = userinfo.partition(":")
    out = urllib.parse.quote(urllib.parse.unquote(user), safe="")
    if sep:
        out += ":" + urllib.parse.quote(urllib.parse.unquote(password), safe="")
    return out
