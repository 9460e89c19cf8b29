"""Alembic environment: runs online against the connection `sluice.db.migrate` hands in."""

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise SystemExit("run migrations with `sluice db up`, which supplies the connection and role names")

context.configure(connection=connection, transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
