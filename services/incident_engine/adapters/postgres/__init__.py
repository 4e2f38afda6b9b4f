"""Postgres adapter: pool, migrations, queries."""
