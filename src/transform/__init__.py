"""Transform: turn new lake files into the star schema's typed Parquet in the processed area.

:mod:`totes.transform.run` finds the new lake files, keeps the reference state, applies the
rules (:mod:`totes.rules`) and writes a batch with its manifest; :mod:`totes.transform.handler`
is the Lambda entry.
"""
