"""What every document store of racefree shares: the protocol, the checks, the async facade.

``protocol`` is the one documented store API (:class:`racefree.StoreProtocol`
and its asyncio twin) that the file store and the PostgreSQL store both
implement; ``checks`` holds the argument checks and encodings both run before
they write anything, so that both accept and refuse the same ids and
documents; ``facade`` turns any synchronous store into an asyncio one.

It lives below both stores so that neither imports the other.

May import: the root modules only.
"""
