"""The lock-file layer: :class:`racefree.LockFile`, for network file systems and pid files.

Promises: the lock file appears with its whole owner record (one ``link``);
a stale lock is reclaimed only on proof that its owner is dead or after its
lease ran out, and exactly one of any number of reclaimers wins; fencing
tokens only ever grow; a holder that lost its lock is told.

Modules: ``lockfile`` (the API and the per-process owners), ``state`` (waiters
and the lease refresher), ``disk`` (the on-disk protocol: create, judge, claim,
remove), ``owner`` (owner records), ``token`` (the fencing-token counter).

May import: the root modules (``_process`` included) and ``racefree.lock``
(the shared lock API).
"""
