"""The on-disk protocol of :class:`~racefree.LockFile`: create, judge, claim, remove.

Names, all in the lock file's directory (``P`` is the lock file)::

    P                          the lock: an owner record (see _lockfile_owner)
    P.token                    the last fencing token handed out, "17\\n"
    .P.<rand>.rec              an owner record being published (then linked to P)
    .P.<ino>.claim<g>          a claim on the lock file whose inode number is <ino>
    .P.<rand>.del, .tok        a lock file being removed; a token file being written

Create: the record is written to a fresh ``.rec`` file (and written back to
the server on NFS by a ``close``), then ``link()``ed to ``P``. ``link`` fails
with EEXIST if ``P`` exists, so it is an atomic create *with content*: a
reader never sees an empty or half-written ``P`` (with ``O_EXCL`` then
``write`` it could, and would have to guess, L6).
On NFS, where a retransmitted ``LINK`` can report EEXIST although it worked,
the link count of the ``.rec`` file tells (``open(2)``'s O_EXCL note).

Remove (release by the holder, or reclaim of a stale lock by anyone): never
"unlink P, then create" (two reclaimers would both win, L7). Instead:

1. claim the inode: ``link(P, .P.<ino>.claim1)``. The name is fixed by the
   inode number, so of all the processes that want to remove this inode only
   one can create it; the others get EEXIST and go back to waiting. While the
   claim exists it pins the inode, so its number cannot be reused meanwhile.
2. check the claim: same inode and same record bytes as judged, else P was
   replaced since we looked (``link`` links whatever P is *now*): unlink our
   claim name, which takes nothing from the new file's owner. Same inode but
   a new mtime: the owner refreshed, it is alive: drop the claim too.
3. ``rename(P, .P.<rand>.del)``, then check that what was renamed is the
   claimed inode. Under the protocol it always is: only the claimer of an
   inode ever moves P while P is that inode. If something outside the
   protocol replaced P meanwhile, it is linked back (never over an existing
   P) and nothing is removed.
4. unlink the ``.del`` name, then the claim (and claims of earlier
   generations, see below).

Interleavings (R1, R2 reclaimers of the stale inode i; H its holder):

- R1 and R2 both judged i stale: both link the claim of i; one gets EEXIST
  and waits. The other removes P; then everybody races ``link(rec, P)``,
  which exactly one wins. Nobody ever removes a P it did not claim.
- R2 judged i, then R1 removed i and created j at P before R2 claims: R2's
  link names j; step 2 sees another inode (or, if j got i's number once i
  was freed, other record bytes) and drops the name. j is untouched.
- R2 claims while R1 is between steps 1 and 4: EEXIST, R2 waits.
- H releases while R1 reclaims it (H stopped refreshing for ``stale_after``,
  a lease that ran out, L8): both claim i, one wins. If R1 wins, H finds
  the claim taken or P gone, removes nothing, and raises LockLost. If H
  wins, R1 finds P gone and tries to create it.
- H refreshes while R1 claims: R1 sees the new mtime in step 2 and gives up;
  H's release meanwhile waits for R1's claim to go (it takes microseconds).
- H lost its lock and a new owner N holds P: H's claim of its own inode
  number names N's file (another inode): H drops the name and raises
  LockLost, N's file stays.
- A claimer dies between steps 1 and 4, leaving its claim: while P is there,
  the next claimer waits until that claim has stood for ``stale_after`` and
  claims the next generation (``.claim2``, ...). A live claimer finishes in
  microseconds, so only one paused for longer than a lease could still be
  in step 3; the put-back there covers it (the paused one removes nothing).
  If P is gone already, the claim is just litter; it pins only a dead inode.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from dataclasses import dataclass, field

from racefree import _fs, _trust
from racefree._errors import UnsafePathError
from racefree.lockfile import owner as _owner

__all__ = [
    "NEW",
    "Hold",
    "Observer",
    "Pending",
    "Seen",
    "create",
    "drop_name",
    "inspect",
    "is_stale",
    "prepare",
    "refresh",
    "release",
    "remove_stale",
    "still_held",
    "unique",
    "unlink_quiet",
]

_RDONLY = os.O_RDONLY | _fs.O_NOFOLLOW | _fs.O_NONBLOCK
NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _fs.O_NOFOLLOW


def sibling(path: str, suffix: str) -> str:
    head, base = os.path.split(path)
    return os.path.join(head, f".{base}.{suffix}")


def unique(path: str, kind: str) -> str:
    return sibling(path, f"{secrets.token_hex(8)}.{kind}")


def _claim_name(path: str, ino: int, generation: int) -> str:
    return sibling(path, f"{ino}.claim{generation}")


def unlink_quiet(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        _fs.unlink(path)


@dataclass
class Hold:
    """A lock file this process created and holds (through ``fd``, kept open)."""

    path: str
    fd: int
    dev: int
    ino: int
    token: int
    lost: bool = False
    # Why the background refresher gave up on this hold (an unexpected error): the
    # lease may have lapsed elsewhere, so the hold counts as lost.
    failure: str = ""


@dataclass(frozen=True)
class Seen:
    """One look at the lock file: which inode, which version, what owner record."""

    dev: int
    ino: int
    mtime_ns: int
    size: int
    data: bytes | None  # the record's bytes; None for the holder's own look (see release)
    record: _owner.OwnerRecord | None

    @property
    def version(self) -> tuple[int, int, int, int, int]:
        # The holder refreshes by touching the file's times (see refresh()):
        # a new mtime is a new version. ctime is not used: claiming (link)
        # changes it without the owner being alive.
        return (self.dev, self.ino, self.mtime_ns, self.size, hash(self.data))


@dataclass
class Observer:
    """When this process first saw each version of the lock file (and of its claims).

    Age is measured on this process's monotonic clock from its own first
    sighting, never by comparing the file's mtime with our clock: another
    host's clock (or the NFS server's) may be off by any amount. A version
    seen at t0 and again at t1 was not refreshed in between, because a refresh
    moves the mtime forward for good.
    """

    first_seen: dict[object, float] = field(default_factory=dict)

    def age(self, key: object, now: float) -> float:
        t0 = self.first_seen.get(key)
        if t0 is None:
            if len(self.first_seen) > 64:
                self.first_seen.clear()
            self.first_seen[key] = t0 = now
        return now - t0


@dataclass
class Pending:
    """The record file an acquirer publishes, kept across attempts of one acquire."""

    name: str
    fd: int
    token: int

    def discard(self) -> None:
        try:
            unlink_quiet(self.name)
        finally:
            _fs.close(self.fd)


# -- create ---------------------------------------------------------------------------

def prepare(path: str, token: int, mode: int | None = None) -> Pending:
    """Write the owner record for a hold with ``token`` to a fresh file, ready to publish.

    ``mode``: the record file's exact permission bits (None: ``0o666 & ~umask``).

    The record is not fsynced: on a local disk every reader sees it from the
    page cache, and after a power loss the lock file is judged by age whatever
    it holds (a new boot). On NFS, closing the writing descriptor (before the
    ``link`` that publishes it) writes the data back to the server, so a
    reader on another client never sees a short record (close-to-open).
    """
    name = unique(path, "rec")
    wfd = _fs.open(name, NEW, 0o666 if mode is None else 0o600)
    fd = -1
    try:
        try:
            if mode is not None:
                _fs.fchmod(wfd, mode)  # before it is published: P never has other bits
            _fs.write_all(wfd, _owner.encode(_owner.own_record(token)))
            # Kept open while held: refreshes go through it, and it pins the
            # inode (its number cannot be reused while we hold the lock).
            fd = _fs.open(name, _RDONLY)
            made, now = _fs.fstat(wfd), _fs.fstat(fd)
            if (made.st_dev, made.st_ino) != (now.st_dev, now.st_ino):
                # Only someone trusted with the directory can rename our file; still, the
                # hold must be the inode we wrote, never whatever took its name.
                raise UnsafePathError(name, "was replaced while it was written")
        finally:
            _fs.close(wfd)
    except BaseException:
        if fd >= 0:
            _fs.close(fd)
        unlink_quiet(name)
        raise
    return Pending(name, fd, token)


def create(path: str, pending: Pending) -> Hold | None:
    """Publish ``pending`` as the lock file ``path``; the hold, or None if the lock exists."""
    try:
        _fs.link(pending.name, path)
    except FileExistsError:
        # NFS: a retransmitted LINK reports EEXIST although the first one
        # worked; then our file has a second name (open(2), O_EXCL).
        if _fs.fstat(pending.fd).st_nlink < 2:
            return None
    st = _fs.fstat(pending.fd)
    return Hold(path, pending.fd, st.st_dev, st.st_ino, pending.token)


def drop_name(pending: Pending) -> None:
    """Remove the ``.rec`` name of a record that is now the lock file (it keeps the name P)."""
    unlink_quiet(pending.name)


# -- look, claim, remove ---------------------------------------------------------------

def inspect(path: str) -> Seen | None:
    """Read the lock file (or a claim name) now; None if there is none.

    Never through a link and never blocking (``O_NOFOLLOW | O_NONBLOCK``), and
    only a regular file racefree may trust (``racefree._trust``): a FIFO, a
    device, a link or another user's file in a shared directory raise
    :class:`~racefree.UnsafePathError` at once, so a timeout always holds. A
    second name is allowed (``links=True``): this protocol links the lock file
    to its claims on purpose, and only reads it here, at most one record.
    The read is bounded: one more byte than the largest owner record.
    """
    try:
        # open() (not stat) also revalidates NFS's attribute cache (close-to-open),
        # so a refresh by a holder on another client is seen.
        fd, st, _created = _trust.open_own(path, os.O_RDONLY, create=False, links=True)
    except FileNotFoundError:
        return None
    try:
        data = _fs.pread(fd, _owner.MAX_RECORD + 1, 0)
    finally:
        _fs.close(fd)
    return Seen(st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, data, _owner.decode(data))


def _stat_seen(path: str) -> Seen | None:
    """Like :func:`inspect` without reading the record (for the holder's own file)."""
    try:
        st = _fs.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return Seen(st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, None, None)


def is_stale(seen: Seen, stale_after: float, observer: Observer, now: float) -> bool:
    """Whether the lock file ``seen`` may be reclaimed now.

    On proof of death (our locality, L6) at once; on proof of life never; an
    owner we cannot judge (another host, a malformed record) once this version
    has stood unchanged, unrefreshed, for ``stale_after`` seconds.
    """
    verdict = _owner.judge(seen.record)
    if verdict is _owner.Verdict.DEAD:
        return True
    if verdict is _owner.Verdict.ALIVE:
        return False
    return observer.age(("lock", *seen.version), now) >= stale_after


_GONE = "gone"  # P is missing or is no longer the inode we looked at
_BUSY = "busy"  # another claimer is at work, or the owner refreshed: not ours now


def _claim(path: str, seen: Seen, stale_after: float, observer: Observer) -> str:
    """Claim the inode ``seen`` (steps 1 and 2): the claim's name, or ``_GONE`` / ``_BUSY``."""
    generation = 1
    dir_st: os.stat_result | None = None
    while True:
        name = _claim_name(path, seen.ino, generation)
        try:
            _fs.link(path, name)
        except FileNotFoundError:
            return _GONE  # P was removed meanwhile
        except FileExistsError:
            # Another claimer is at work (it finishes in microseconds), or died
            # in the middle: only a claim that stood for stale_after is passed
            # over, by claiming the next generation.
            try:
                st = _fs.stat(name, follow_symlinks=False)
            except FileNotFoundError:
                continue  # that claimer just finished: try this generation again
            if dir_st is None:
                dir_st = _fs.stat(os.path.dirname(path) or ".", follow_symlinks=False)
            if not _trust.trusted(st, dir_st, links=True):
                # Not a claimer's: another user's file at the name (in a shared
                # directory), which they could make again with a new inode each
                # time so that it never looks old. Passed over at once.
                generation += 1
                continue
            key = ("claim", st.st_dev, st.st_ino, generation)
            if observer.age(key, time.monotonic()) < stale_after:
                return _BUSY
            generation += 1
            continue
        now = inspect(name) if seen.data is not None else _stat_seen(name)
        if now is None:
            # A claimer of a later generation finished and removed the
            # claims of the earlier ones: the inode is gone from P.
            return _GONE
        if (now.dev, now.ino) != (seen.dev, seen.ino) or (
            seen.data is not None and now.data != seen.data
        ):
            # P was replaced since we looked, so link() named the new file:
            # drop our name for it (that takes nothing from its owner). The
            # content check catches a new file that got the old one's inode
            # number once the old one was freed (ABA): its record differs.
            unlink_quiet(name)
            return _GONE
        if (now.mtime_ns, now.size) != (seen.mtime_ns, seen.size):
            unlink_quiet(name)  # refreshed since we judged it: its owner is alive
            return _BUSY
        return name


def _remove_claimed(path: str, dev: int, ino: int, claim: str) -> bool:
    """Steps 3 and 4: take ``P`` away if it is still inode ``ino``; True if it was."""
    doomed = unique(path, "del")
    try:
        _fs.replace(path, doomed)
    except FileNotFoundError:
        unlink_quiet(claim)
        return False
    st = _fs.stat(doomed, follow_symlinks=False)
    if (st.st_dev, st.st_ino) != (dev, ino):
        # Only reachable if something outside the protocol replaced P (or a
        # claimer was paused for longer than a lease): put the file we took
        # back. link() never overwrites, so a lock created in this window by
        # someone else stays; the displaced holder then finds P is not its
        # own and learns it lost the lock (L8).
        with contextlib.suppress(FileExistsError):
            _fs.link(doomed, path)
        unlink_quiet(doomed)
        unlink_quiet(claim)
        return False
    unlink_quiet(doomed)
    unlink_quiet(claim)
    # Claims of earlier generations on this inode were abandoned by dead
    # claimers; they name this inode only (while a claim exists its inode
    # number cannot be reused), so removing them takes nothing from anyone.
    generation = int(claim.rsplit(".claim", 1)[1])
    for g in range(1, generation):
        _unlink_if(_claim_name(path, ino, g), dev, ino)
    return True


def _unlink_if(name: str, dev: int, ino: int) -> None:
    """Remove ``name`` only if it is a name of the inode ``(dev, ino)``: never another file."""
    try:
        st = _fs.stat(name, follow_symlinks=False)
    except FileNotFoundError:
        return
    if (st.st_dev, st.st_ino) == (dev, ino):
        unlink_quiet(name)


def remove_stale(path: str, seen: Seen, stale_after: float, observer: Observer) -> bool:
    """Reclaim the stale lock file ``seen``; True if this call removed it.

    Of any number of processes calling this for one stale lock file at once,
    at most one gets True (L7); the others find it claimed, gone or held
    again, and go back to trying to create the lock.
    """
    claim = _claim(path, seen, stale_after, observer)
    if claim in (_GONE, _BUSY):
        return False
    return _remove_claimed(path, seen.dev, seen.ino, claim)


def still_held(hold: Hold) -> bool:
    """Whether ``P`` is still the file of ``hold`` (False: reclaimed or replaced, L8)."""
    try:
        st = _fs.stat(hold.path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (hold.dev, hold.ino)


def refresh(hold: Hold) -> None:
    """Show that the holder is alive: move the lock file's times to now.

    Through the descriptor, never by name: if the lock was reclaimed, this
    touches our orphaned inode, never the new owner's file.
    """
    _fs.utime(hold.fd)


def release(hold: Hold, stale_after: float) -> bool:
    """Remove the lock file of ``hold``; False if the lock had been lost (nothing removed).

    The descriptor is closed either way. The holder claims its own inode like
    any reclaimer, so a release and a reclaim of the same file (a holder that
    was judged stale, L8) never both remove ``P``: whoever claims first does.
    """
    observer = Observer()
    delay = 0.0005
    try:
        while True:
            st = _fs.fstat(hold.fd)
            # Our descriptor keeps our inode alive, so no other file can have
            # its number meanwhile: the inode check alone identifies it.
            seen = Seen(st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, None, None)
            claim = _claim(hold.path, seen, stale_after, observer)
            if claim == _GONE:
                return False  # reclaimed, maybe held by another owner now: leave it (L8)
            if claim != _BUSY:
                return _remove_claimed(hold.path, hold.dev, hold.ino, claim)
            # Someone claimed our inode (it judged us stale): it removes P in
            # a moment, or gives up if it sees our file is fresh after all.
            if not still_held(hold):
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
    finally:
        _fs.close(hold.fd)
