"""PostgreSQL: connection pool, migrations and the embedded server launcher."""
