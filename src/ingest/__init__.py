"""Ingest: copy the row versions changed since the last batch from the source into the lake.

:mod:`totes.ingest.plan` resolves the configuration into one payload per table;
:mod:`totes.ingest.extract` runs one table; :mod:`totes.ingest.handler` are the Lambda entry
points.
"""
