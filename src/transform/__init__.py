"""Transform: turn new lake files into the star schema's typed Parquet in the processed area.

:mod:`totes.transform.dimensions` and :mod:`totes.transform.facts` hold the derivation rules
(docs/warehouse.md); :mod:`totes.transform.run` finds the new lake files, keeps the reference
state and writes a batch with its manifest; :mod:`totes.transform.handler` is the Lambda entry.
"""
