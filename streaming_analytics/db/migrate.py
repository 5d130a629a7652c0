"""Apply the SQL migrations in ``streaming_analytics/db/migrations`` to one schema; idempotent.

Usage::

    python -m streaming_analytics.db.migrate                # SA_POSTGRES_DSN, schema "public"
    python -m streaming_analytics.db.migrate --schema t_x   # another schema (tests use one each)
    python -m streaming_analytics.db.migrate --status       # list applied/pending, change nothing

Each file ``NNNN_name.sql`` is one version, applied in its own transaction together with its row in
``<schema>.schema_migrations`` (version, name, sha256 checksum). Why a checksum: editing a migration
that already ran somewhere silently forks the schema, so the runner refuses to continue when an
applied file changed — add a new migration instead. A transaction-scoped advisory lock per schema
serialises concurrent runners (two launchers, parallel test modules), so each version is applied
exactly once.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Final

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import connection as pg_connection

from streaming_analytics.settings import Settings

log = logging.getLogger(__name__)

MIGRATIONS_PACKAGE: Final = "streaming_analytics.db"
_FILE_RE: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
#: Schemas we create and write to: plain lower-case identifiers, so no quoting surprises in psql.
SCHEMA_RE: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class MigrationError(RuntimeError):
    """The database's recorded migrations do not match the files (edited or missing migration)."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def check_schema_name(schema: str) -> str:
    """Return ``schema`` if it is a name we accept, else raise ``ValueError``."""
    if not SCHEMA_RE.match(schema):
        raise ValueError(f"schema name {schema!r} must match {SCHEMA_RE.pattern}")
    return schema


def load_migrations() -> list[Migration]:
    """The migration files, in version order; duplicate versions are an error."""
    found: dict[int, Migration] = {}
    for entry in resources.files(MIGRATIONS_PACKAGE).joinpath("migrations").iterdir():
        match = _FILE_RE.match(entry.name)
        if match is None:
            continue
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migrations with version {version}: "
                                 f"{found[version].name}, {entry.name}")
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def _lock_and_prepare(conn: pg_connection, schema: str) -> dict[int, str]:
    """Inside the open transaction: lock the schema, create it and the ledger, return the ledger."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"streaming_analytics.migrate:{schema}",))
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        cur.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(sql.Identifier(schema))
        )
        cur.execute(
            sql.SQL("SELECT version, checksum FROM {}.schema_migrations").format(sql.Identifier(schema))
        )
        return {int(version): str(checksum) for version, checksum in cur.fetchall()}


def _verify(applied: dict[int, str], migrations: list[Migration]) -> None:
    by_version = {m.version: m for m in migrations}
    for version, checksum in sorted(applied.items()):
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(f"version {version} is applied in the database but has no file here "
                                 "(is this code older than the database?)")
        if migration.checksum != checksum:
            raise MigrationError(f"migration {version}_{migration.name} changed after it was applied; "
                                 "add a new migration instead of editing an applied one")


def migrate(dsn: str, schema: str = "public") -> list[str]:
    """Apply every pending migration to ``schema``; return the names applied (empty: up to date)."""
    check_schema_name(schema)
    migrations = load_migrations()
    applied_now: list[str] = []
    conn = psycopg2.connect(dsn, application_name="streaming-analytics-migrate")
    try:
        for migration in migrations:
            # One transaction per version: a failing migration leaves the earlier ones applied.
            with conn, conn.cursor() as cur:
                applied = _lock_and_prepare(conn, schema)
                _verify(applied, migrations)
                if migration.version in applied:
                    continue
                cur.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
                cur.execute(migration.sql)
                cur.execute(
                    sql.SQL("INSERT INTO {}.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)")
                    .format(sql.Identifier(schema)),
                    (migration.version, migration.name, migration.checksum),
                )
            applied_now.append(f"{migration.version:04d}_{migration.name}")
            log.info("applied migration %04d_%s to schema %s", migration.version, migration.name, schema)
    finally:
        conn.close()
    return applied_now


def status(dsn: str, schema: str = "public") -> list[tuple[str, bool]]:
    """Each migration's name and whether ``schema`` has it; changes nothing."""
    check_schema_name(schema)
    conn = psycopg2.connect(dsn, application_name="streaming-analytics-migrate")
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)", (f"{schema}.schema_migrations",))
            row = cur.fetchone()
            applied: set[int] = set()
            if row is not None and row[0] is not None:
                cur.execute(sql.SQL("SELECT version FROM {}.schema_migrations")
                            .format(sql.Identifier(schema)))
                applied = {int(v) for (v,) in cur.fetchall()}
    finally:
        conn.close()
    return [(f"{m.version:04d}_{m.name}", m.version in applied) for m in load_migrations()]


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m streaming_analytics.db.migrate",
                                     description="Apply the platform's PostgreSQL migrations.")
    parser.add_argument("--dsn", default=None, help="PostgreSQL DSN (default: SA_POSTGRES_DSN).")
    parser.add_argument("--schema", default="public", help="Target schema (default: public).")
    parser.add_argument("--status", action="store_true", help="Only list applied and pending migrations.")
    args = parser.parse_args(argv)
    dsn = args.dsn or Settings.from_env().postgres_dsn
    if args.status:
        for name, done in status(dsn, args.schema):
            print(f"{'applied' if done else 'pending'}  {name}")
        return 0
    names = migrate(dsn, args.schema)
    print(f"schema {args.schema}: " + (f"applied {', '.join(names)}" if names else "up to date"))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
