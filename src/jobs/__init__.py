"""Jobs that run several stages in one process: the Glue job that transforms and loads on
Spark (:mod:`totes.jobs.glue_stages`)."""
