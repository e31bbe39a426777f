"""The local runtime: an embedded PostgreSQL, the ToteSys seeder and the pipeline runner that
calls the same stage functions, with the same JSON payloads, as the Step Functions state
machine."""
