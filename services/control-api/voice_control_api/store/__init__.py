"""PostgreSQL access per resource (asyncpg). Every query that reads tenant data filters by tenant."""
