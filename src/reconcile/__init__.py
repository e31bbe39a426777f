"""Reconcile: the source's current rows put through the star schema's rules
(:mod:`totes.rules`) and compared with the warehouse, after a load.

:mod:`totes.reconcile.reconcile` compares; :mod:`totes.reconcile.handler` is the Lambda entry
point of the state machine's Reconcile step.
"""
