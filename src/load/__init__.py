"""Load: write committed transform batches into the PostgreSQL warehouse.

:mod:`totes.load.warehouse` merges batches in one transaction; :mod:`totes.load.handler` is the
Lambda entry point.
"""
