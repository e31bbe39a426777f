"""Modules shared by the stages: errors, configuration, database connections, lake storage."""
