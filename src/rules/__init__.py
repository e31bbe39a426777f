"""The star schema's derivation rules: source row versions → dimension and fact rows, typed as
the warehouse columns, and the quarantine of the versions that break a rule.

Shared by the two stages that apply them: transform (:mod:`totes.transform.run`, which builds
the processed batches with them) and reconcile (:mod:`totes.reconcile.reconcile`, which
verifies the warehouse with the same rules). :mod:`totes.rules.columns` converts columns,
:mod:`totes.rules.dimensions` and :mod:`totes.rules.facts` build the tables (the derivations
are listed in docs/warehouse.md).
"""
