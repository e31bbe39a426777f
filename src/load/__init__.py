"""Load: write committed transform batches into the PostgreSQL warehouse.

:mod:`totes.load.warehouse` merges batches in one transaction (:mod:`totes.load.held_facts`
holds fact rows whose dimension row has not arrived); :mod:`totes.load.pending` says what is
left to do; :mod:`totes.load.quarantine` reports what is held; :mod:`totes.load.handler` is
the Lambda entry point.
"""
