"""The PostgreSQL layer: :class:`racefree.PgStore`, :class:`racefree.AsyncPgStore` and
:class:`racefree.PgLock`, the store and lock API for several machines.

Promises: the file store's semantics on one table (each write one statement or
one transaction, ``update`` under a row lock, durable with
``synchronous_commit=on``); a lock held by one server session, freed when that
session ends, with a fencing token that the store checks. psycopg is imported
only when a PostgreSQL store or lock is used (``pip install 'racefree[postgres]'``).

Modules: ``driver`` (the driver, URLs, the schema, lost connections), ``userinfo``
(a URL's user part as its writer meant it, whatever its password holds), ``pool``,
``session`` (a lock's own connection), ``sql``, ``lock``, ``batch``, ``store``
and ``asyncstore``.

May import: the root modules, ``racefree.storeapi`` and ``racefree.lock`` (the
shared lock API).
"""
