"""The SQL of the PostgreSQL store, one statement per guarantee.

Every write is one statement whose WHERE clause carries its condition
(``expect_version``, "must not exist", "is not deleted"), so the check and the
write are one atomic step in the server: no read-then-write window in which
another client could slip in (pitfall S1). A statement that matched no row
means the condition failed, and nothing was written.

Rows with ``doc IS NULL`` are tombstones: a deleted id keeps its last
version, so a later put continues from it and a version number never names
two different documents of one id.
"""

from __future__ import annotations

# put, no condition: insert version 1, or replace and bump the version.
PUT = (
    "INSERT INTO racefree_docs AS d (store, id, version, doc) VALUES (%s, %s, 1, %s)"
    " ON CONFLICT (store, id) DO UPDATE SET version = d.version + 1, doc = EXCLUDED.doc"
    " RETURNING version"
)

# put with expect_version=0: only if the id does not exist (never existed, or deleted).
PUT_NEW = (
    "INSERT INTO racefree_docs AS d (store, id, version, doc) VALUES (%s, %s, 1, %s)"
    " ON CONFLICT (store, id) DO UPDATE SET version = d.version + 1, doc = EXCLUDED.doc"
    " WHERE d.doc IS NULL"
    " RETURNING version"
)

# put with expect_version=N>0: only if the live document is at version N.
PUT_IF = (
    "UPDATE racefree_docs SET version = version + 1, doc = %s"
    " WHERE store = %s AND id = %s AND version = %s AND doc IS NOT NULL"
    " RETURNING version"
)

DELETE = (
    "UPDATE racefree_docs SET version = version + 1, doc = NULL"
    " WHERE store = %s AND id = %s AND doc IS NOT NULL"
    " RETURNING version"
)

DELETE_IF = (
    "UPDATE racefree_docs SET version = version + 1, doc = NULL"
    " WHERE store = %s AND id = %s AND version = %s AND doc IS NOT NULL"
    " RETURNING version"
)

GET = "SELECT doc FROM racefree_docs WHERE store = %s AND id = %s AND doc IS NOT NULL"

GET_WITH_VERSION = (
    "SELECT version, doc FROM racefree_docs WHERE store = %s AND id = %s AND doc IS NOT NULL"
)

VERSION = "SELECT version FROM racefree_docs WHERE store = %s AND id = %s AND doc IS NOT NULL"

# The version of a live document or a tombstone (a deleted id keeps its version).
ANY_VERSION = "SELECT version FROM racefree_docs WHERE store = %s AND id = %s"

# update(): the row lock makes the read-modify-write exclusive across every
# client of the server; a tombstone row is locked too, and a never-seen id gets
# a placeholder row (version 0, no document) inside the transaction to lock.
LOCK_ROW = "SELECT version, doc FROM racefree_docs WHERE store = %s AND id = %s FOR UPDATE"

REPLACE_LOCKED = (
    "UPDATE racefree_docs SET version = version + 1, doc = %s"
    " WHERE store = %s AND id = %s RETURNING version"
)

PLACEHOLDER = (
    "INSERT INTO racefree_docs (store, id, version, doc) VALUES (%s, %s, 0, NULL)"
    " ON CONFLICT (store, id) DO NOTHING"
)

COUNT = "SELECT count(*) FROM racefree_docs WHERE store = %s AND doc IS NOT NULL"

KEYS = "SELECT id FROM racefree_docs WHERE store = %s AND doc IS NOT NULL ORDER BY id"

ITEMS = "SELECT id, doc FROM racefree_docs WHERE store = %s AND doc IS NOT NULL ORDER BY id"

ITEMS_WITH_VERSION = (
    "SELECT id, version, doc FROM racefree_docs WHERE store = %s AND doc IS NOT NULL"
    " ORDER BY id"
)

# Fencing: remember the highest token presented per lock name and refuse a
# lower one, in the transaction of the write it guards; the row lock taken
# here orders two fenced writers of one lock (Kleppmann 2016, pitfall L8).
FENCE = (
    "INSERT INTO racefree_fences AS f (name, token) VALUES (%s, %s)"
    " ON CONFLICT (name) DO UPDATE SET token = EXCLUDED.token"
    " WHERE f.token <= EXCLUDED.token"
    " RETURNING token"
)

FENCE_SEEN = "SELECT token FROM racefree_fences WHERE name = %s"

# Copy (racefree store copy): set a document at an exact version.
PUT_AT = (
    "INSERT INTO racefree_docs AS d (store, id, version, doc) VALUES (%s, %s, %s, %s)"
    " ON CONFLICT (store, id) DO UPDATE SET version = EXCLUDED.version, doc = EXCLUDED.doc"
)

SERVER_SETTINGS = (
    "SELECT name, setting FROM pg_settings"
    " WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes')"
)

CHECK = (
    "SELECT count(*) FILTER (WHERE doc IS NOT NULL),"
    " count(*) FILTER (WHERE doc IS NULL),"
    " sum(octet_length(doc::text)),"
    " count(*) FILTER (WHERE doc IS NOT NULL AND json_typeof(doc) <> 'object'),"
    " count(*) FILTER (WHERE version < 1)"
    " FROM racefree_docs WHERE store = %s"
)

ALL_IDS = "SELECT id FROM racefree_docs WHERE store = %s"
