"""The adapters to the outside world, and nothing else: the source readers
(:mod:`~totes.utils.source_reader` and its PostgreSQL and MySQL readers and catalogs), the
database connections (:mod:`~totes.utils.postgres`, :mod:`~totes.utils.mysql`) with their
COPY and merge code, lake storage (:mod:`~totes.utils.lake`, with the footers and manifests
read from it), the ledger and its leases, and the one settings object
(:mod:`~totes.utils.settings`) with the resources built from it.
"""
