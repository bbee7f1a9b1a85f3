"""A CRM-like database with every kind of object a restore can get wrong, and a way to compare two.

The comparison reads digests of every row (not only counts) and the
definitions of every object, so "restored" means "equal", not "similar".
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

RICH_SCHEMA = """
CREATE SCHEMA crm;
CREATE SCHEMA "CRM Sales";
CREATE SCHEMA audit;

CREATE TYPE crm.deal_stage AS ENUM ('lead', 'qualified', 'won', 'lost');
CREATE DOMAIN crm.email AS text CHECK (VALUE ~ '^[^@]+@[^@]+$');

CREATE SEQUENCE crm.invoice_number START 1000 INCREMENT 7;
SELECT setval('crm.invoice_number', 424242);

CREATE TABLE crm.contacts (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    email crm.email,
    photo bytea,
    tags text[],
    profile jsonb,
    created_at timestamptz NOT NULL DEFAULT '2026-01-01T00:00:00Z'
);

CREATE TABLE "CRM Sales"."Deals" (
    "DealId" integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    contact_id bigint REFERENCES crm.contacts(id),
    stage crm.deal_stage NOT NULL,
    amount numeric(12, 2),
    closed_on date
) ;

CREATE TABLE crm.events (
    id bigint NOT NULL,
    happened_on date NOT NULL,
    payload text
) PARTITION BY RANGE (happened_on);
CREATE TABLE crm.events_2025 PARTITION OF crm.events
    FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE crm.events_2026 PARTITION OF crm.events
    FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');

CREATE TABLE audit.log (id bigserial PRIMARY KEY, entry text, at timestamptz);

CREATE FUNCTION audit.remember() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit.log (entry, at) VALUES (TG_TABLE_NAME || ':' || NEW.id, '2026-01-01');
    RETURN NEW;
END $$;
CREATE TRIGGER contacts_audit AFTER INSERT ON crm.contacts
    FOR EACH ROW EXECUTE FUNCTION audit.remember();

CREATE FUNCTION "CRM Sales".total_won() RETURNS numeric LANGUAGE sql STABLE AS
    $$ SELECT coalesce(sum(amount), 0) FROM "CRM Sales"."Deals" WHERE stage = 'won' $$;

INSERT INTO crm.contacts (name, email, photo, tags, profile)
SELECT
    'Contact ' || n || ' — Ünïcödé 東京 ' || chr(127757),
    'user' || n || '@example.org',
    decode(md5(n::text) || md5((n * 7)::text), 'hex') || '\\x00ff00'::bytea,
    ARRAY['vip', 'tag-' || (n % 5)],
    jsonb_build_object('n', n, 'nested', jsonb_build_object('ok', n % 2 = 0))
FROM generate_series(1, 500) AS n;
INSERT INTO crm.contacts (name, email, photo) VALUES ('Nobody', NULL, NULL);

INSERT INTO "CRM Sales"."Deals" (contact_id, stage, amount, closed_on)
SELECT n, (ARRAY['lead','qualified','won','lost']::crm.deal_stage[])[1 + n % 4],
       n * 10.25, DATE '2026-01-01' + n
FROM generate_series(1, 300) AS n;

INSERT INTO crm.events SELECT n, DATE '2025-06-01' + (n % 400), repeat('x', n % 50)
FROM generate_series(1, 2000) AS n;

CREATE MATERIALIZED VIEW crm.deal_summary AS
    SELECT stage, count(*) AS deals, sum(amount) AS total FROM "CRM Sales"."Deals" GROUP BY stage;

SELECT lo_from_bytea(0, convert_to('first large object ' || repeat('é', 1000), 'UTF8'));
SELECT lo_from_bytea(0, decode(repeat('00ff', 50000), 'hex'));
"""

INVENTORY_QUERIES = {
    "schemas": "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%'"
    " AND nspname <> 'information_schema' ORDER BY 1",
    "tables": "SELECT n.nspname || '.' || c.relname || ':' || c.relkind::text FROM pg_class c"
    " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p','m','v','S')"
    " AND n.nspname NOT IN ('pg_catalog','information_schema','pg_toast') ORDER BY 1",
    "enums": "SELECT t.typname || ':' || string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)"
    " FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid GROUP BY t.typname ORDER BY 1",
    "domains": "SELECT typname || ':' || pg_get_constraintdef(c.oid) FROM pg_type t"
    " JOIN pg_constraint c ON c.contypid = t.oid WHERE t.typtype = 'd' ORDER BY 1",
    "functions": "SELECT pg_get_functiondef(p.oid) FROM pg_proc p"
    " JOIN pg_namespace n ON n.oid = p.pronamespace"
    " WHERE n.nspname NOT IN ('pg_catalog','information_schema') ORDER BY 1",
    "triggers": "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1",
    "partitions": "SELECT c.relname || ':' || pg_get_expr(c.relpartbound, c.oid) FROM pg_class c"
    " WHERE c.relispartition ORDER BY 1",
    "sequences": "SELECT schemaname || '.' || sequencename || ':' || coalesce(last_value, 0)"
    " FROM pg_sequences ORDER BY 1",
    "large_objects": "SELECT md5(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY 1",
}


def connect(dbname: str) -> psycopg.Connection:
    return psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{dbname}", autocommit=True)


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


OTHER_TESTS = re.compile(r"[a-z0-9_]+_[0-9a-f]{10}|bp_(restore|replaced)_[0-9]{10}_[0-9a-f]{8}")
"""The databases other tests make on the machine's cluster while one runs (the suite runs on
every core): `unique_name`s, and a restore's own scratch databases. A drill's scratch
databases (`bp_drill_*`) are not among them: they never belong on that cluster."""


def appeared_elsewhere(appeared: set[str]) -> bool:
    """Whether every database in `appeared` is one another test may have made meanwhile."""
    return all(OTHER_TESTS.fullmatch(name) for name in appeared)


@contextmanager
def scratch_databases(*names: str) -> Iterator[None]:
    """Drop these databases (and anything left behind) when the block ends."""
    try:
        yield
    finally:
        with connect("postgres") as admin:
            for name in names:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


def create_rich_database(name: str, owner: str | None = None) -> None:
    with connect("postgres") as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with connect(name) as connection:
        if owner:
            connection.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
        connection.execute(RICH_SCHEMA)


def row_digests(connection: psycopg.Connection) -> dict[str, tuple[int, str]]:
    """Per table and materialized view: row count and an order-independent digest of its rows."""
    relations = connection.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN"
        " ('pg_catalog', 'information_schema', 'pg_toast') ORDER BY 1, 2"
    ).fetchall()
    digests = {}
    for schema, table in relations:
        query = sql.SQL(
            "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '')"
            " FROM ONLY {}.{} AS t"
        ).format(sql.Identifier(schema), sql.Identifier(table))
        digests[f"{schema}.{table}"] = tuple(connection.execute(query).fetchone())
    return digests


def database_state(name: str) -> dict[str, object]:
    """Everything that must survive a backup and restore: objects and row digests."""
    with connect(name) as connection:
        state: dict[str, object] = {
            key: [row[0] for row in connection.execute(query).fetchall()]
            for key, query in INVENTORY_QUERIES.items()
        }
        state["rows"] = row_digests(connection)
        state["total_won"] = connection.execute('SELECT "CRM Sales".total_won()').fetchone()[0]
        state["next_invoice"] = connection.execute(
            "SELECT last_value FROM crm.invoice_number"
        ).fetchone()[0]
    return state
