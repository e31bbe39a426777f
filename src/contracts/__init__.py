"""The contracts between the stages: what they exchange, as data shapes, parsing and
validation. A contract imports nothing of the project's but other contracts: the I/O that
reads and writes them is in :mod:`totes.utils`.

* :mod:`~totes.contracts.config`: the pipeline file and its resolution into table plans;
* :mod:`~totes.contracts.stage_results`: what each stage returns (the state machine's JSON);
* :mod:`~totes.contracts.watermark`: what a lake batch's footer says; :mod:`~totes.contracts.
  partitions`: the key ranges of a partitioned batch;
* :mod:`~totes.contracts.manifest`: the commit record of a transform batch;
* :mod:`~totes.contracts.star_schema`: the warehouse tables; :mod:`~totes.contracts.
  source_tables`: the ToteSys tables; :mod:`~totes.contracts.quarantine`: quarantine files;
* :mod:`~totes.contracts.errors`: the error taxonomy (retry or not);
  :mod:`~totes.contracts.step_errors`: errors as Step Functions hands them on;
  :mod:`~totes.contracts.identifiers`: the rule for SQL identifiers.
"""
