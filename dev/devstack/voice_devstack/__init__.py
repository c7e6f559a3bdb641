"""Development tooling, never imported by a service: ``stack`` (the embedded NATS, PostgreSQL and LLM behind
`make run` and the test fixtures) and ``speech`` (caller speech for tests and benchmarks)."""
