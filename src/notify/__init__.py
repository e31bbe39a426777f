"""Notify: the one readable alert a failed execution sends (:mod:`totes.notify.alerts`)."""
