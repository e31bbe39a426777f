"""totes: incremental ETL of the ToteSys OLTP database into a star-schema warehouse.

Stages: :mod:`totes.ingest` (source → Parquet lake), :mod:`totes.transform` (lake → star
schema Parquet in the processed area), :mod:`totes.load` (processed area → PostgreSQL
warehouse). :mod:`totes.local` runs them on a laptop; the Lambda handlers run them in AWS.
"""
