"""Alembic environment. Runs on a connection handed in by ``mes.migrate`` (async engines run
it through ``run_sync``), or on its own engine from ``sqlalchemy.url`` for the alembic CLI."""

from alembic import context
from sqlalchemy import Connection, create_engine
from sqlmodel import SQLModel

import mes.models  # noqa: F401  (registers every table on the metadata)

config = context.config
target_metadata = SQLModel.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection given and sqlalchemy.url is not set")
    sync_url = url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg2")
    engine = create_engine(sync_url)
    with engine.connect() as conn:
        _configure(conn)
        conn.commit()


if context.is_offline_mode():
    raise RuntimeError("offline migrations are not supported; run `mes db upgrade`")
run()
