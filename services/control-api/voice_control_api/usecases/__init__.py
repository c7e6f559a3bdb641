"""Use cases, one module per resource: tenant and ownership checks, transactions, audit entries and the KV
mirror. Routers call these functions and map what they return (or raise, see ``errors``) to HTTP."""
