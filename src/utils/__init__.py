"""Modules shared by the stages: errors, configuration, settings, database connections, lake
storage, and the contracts between stages (source tables, watermarks, manifests, stage
results, the star schema)."""
