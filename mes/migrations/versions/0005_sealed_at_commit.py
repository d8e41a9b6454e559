"""audit chain and lot closure completed at commit (PostgreSQL: deferred triggers)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 16:10:00.000000

Both serialised appends - the audit chain (AT-5) and the genealogy closure ``lot_reach`` - take
their turn inside COMMIT on PostgreSQL, in deferred constraint triggers, so neither lock is
held across a round trip to the application.

An audit entry now carries ``content_hash`` = SHA-256 of its canonical content (set when it is
recorded) and is linked into the chain by ``hash`` = SHA-256(prev_hash || content_hash) at
position ``chain_seq`` (1, 2, 3... in commit order). On PostgreSQL the link is made by the
deferred constraint trigger ``mes_audit_seal`` while the transaction commits: the chain lock
(``pg_advisory_xact_lock``) is then held only inside COMMIT, never across a round trip to the
application. Entries chained before this revision keep their hashes (``content_hash`` NULL;
verified by the former formula) and get positions 1, 2, 3... in ``seq`` order (``seq`` itself
may have gaps: identity values of rolled-back inserts are not reused).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# mes.audit.service.CHAIN_LOCK_ID ("MESA"); mes.audit.rules.GENESIS_HASH is 64 zeros.
CHAIN_LOCK_ID = 0x4D455341

PG_SEAL = f"""
CREATE OR REPLACE FUNCTION mes_audit_seal() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    last_seq bigint;
    last_hash text;
BEGIN
    IF TG_TABLE_NAME <> 'audit_entry' THEN
        RAISE EXCEPTION 'mes_audit_seal is the trigger of audit_entry only';
    END IF;
    -- AT-5: one chain. Commits that carry audit entries take turns here; each statement
    -- below sees every chain link committed before the lock was granted.
    PERFORM pg_advisory_xact_lock({CHAIN_LOCK_ID});
    SELECT chain_seq, hash INTO last_seq, last_hash
        FROM audit_entry WHERE chain_seq IS NOT NULL ORDER BY chain_seq DESC LIMIT 1;
    IF last_seq IS NULL THEN
        last_seq := 0;
        last_hash := repeat('0', 64);
    END IF;
    UPDATE audit_entry
        SET chain_seq = last_seq + 1,
            prev_hash = last_hash,
            hash = encode(sha256(convert_to(last_hash || NEW.content_hash, 'UTF8')), 'hex')
        WHERE seq = NEW.seq;
    RETURN NULL;
END
$$
"""

# AT-4 for audit_entry: no UPDATE or DELETE, except the seal above filling the chain columns
# of a row not yet sealed (and nothing else of it); AT-5: a new row comes with its content hash
# and without a link (a preset position could only block or fork honest commits).
PG_GUARD = """
CREATE OR REPLACE FUNCTION mes_audit_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.content_hash IS NULL OR NEW.chain_seq IS NOT NULL OR NEW.prev_hash IS NOT NULL
           OR NEW.hash IS NOT NULL THEN
            RAISE EXCEPTION 'AT-5: an audit entry is inserted with its content hash and '
                'without a chain link (the link is made at COMMIT)'
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE' AND pg_trigger_depth() > 1 AND OLD.hash IS NULL
       AND NEW.hash IS NOT NULL AND OLD.content_hash IS NOT NULL
       AND to_jsonb(NEW) - 'chain_seq' - 'prev_hash' - 'hash'
           = to_jsonb(OLD) - 'chain_seq' - 'prev_hash' - 'hash' THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'AT-4: % on append-only table % is refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""

# mes.genealogy.repository.REACH_LOCK ("lot_re").
REACH_LOCK = 0x6C6F745F7265

# The pairs a new edge adds to lot_reach: the parent and its ancestors times the child and its
# descendants (mes.genealogy.repository.reach_insert_stmt, which SQLite runs). The walks run
# after the turn is granted, so they see the edges of every transaction committed before.
PG_REACH = f"""
CREATE OR REPLACE FUNCTION mes_lot_reach_close() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_TABLE_NAME <> 'genealogy_edge' THEN
        RAISE EXCEPTION 'mes_lot_reach_close is the trigger of genealogy_edge only';
    END IF;
    PERFORM pg_advisory_xact_lock({REACH_LOCK});
    INSERT INTO lot_reach (ancestor_lot_id, descendant_lot_id)
    WITH RECURSIVE up(lot_id) AS (
        SELECT NEW.parent_lot_id
        UNION
        SELECT e.parent_lot_id FROM genealogy_edge e JOIN up ON e.child_lot_id = up.lot_id
    ), down(lot_id) AS (
        SELECT NEW.child_lot_id
        UNION
        SELECT e.child_lot_id FROM genealogy_edge e JOIN down ON e.parent_lot_id = down.lot_id
    )
    SELECT up.lot_id, down.lot_id FROM up CROSS JOIN down
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$
"""

BACKFILL = """
UPDATE audit_entry SET chain_seq = numbered.position
FROM (SELECT seq, row_number() OVER (ORDER BY seq) AS position FROM audit_entry) AS numbered
WHERE audit_entry.seq = numbered.seq
"""

SQLITE_GUARDS = {
    verb: f"CREATE TRIGGER audit_entry_no_{verb.lower()} BEFORE {verb} ON audit_entry "
    f"BEGIN SELECT RAISE(ABORT, 'AT-4: {verb} on append-only table audit_entry is refused'); END"
    for verb in ("UPDATE", "DELETE")
}


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.add_column("audit_entry", sa.Column("content_hash", sa.String(length=64), nullable=True))
    op.add_column("audit_entry", sa.Column("chain_seq", sa.BigInteger(), nullable=True))
    # Entries so far are chained in seq order: positions 1, 2, 3... (seq may have gaps).
    if postgresql:
        op.execute("ALTER TABLE audit_entry DISABLE TRIGGER audit_entry_append_only")
        op.execute(BACKFILL)
        op.execute("ALTER TABLE audit_entry ENABLE TRIGGER audit_entry_append_only")
    else:
        op.execute("DROP TRIGGER audit_entry_no_update")
        op.execute(BACKFILL)
        op.execute(SQLITE_GUARDS["UPDATE"])
    op.create_index("ix_audit_entry_chain_seq", "audit_entry", ["chain_seq"], unique=True)
    if not postgresql:
        # SQLite chains in the application before COMMIT (every write transaction there is
        # BEGIN IMMEDIATE), so its rows are complete when inserted.
        return
    op.alter_column("audit_entry", "prev_hash", existing_type=sa.String(64), nullable=True)
    op.alter_column("audit_entry", "hash", existing_type=sa.String(64), nullable=True)
    op.execute(PG_GUARD)
    op.execute("DROP TRIGGER audit_entry_append_only ON audit_entry")
    op.execute(
        "CREATE TRIGGER audit_entry_append_only BEFORE INSERT OR UPDATE OR DELETE ON "
        "audit_entry FOR EACH ROW EXECUTE FUNCTION mes_audit_guard()"
    )
    op.execute(PG_SEAL)
    op.execute(
        "CREATE CONSTRAINT TRIGGER audit_entry_seal AFTER INSERT ON audit_entry "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION mes_audit_seal()"
    )
    op.execute(PG_REACH)
    op.execute(
        "CREATE CONSTRAINT TRIGGER genealogy_edge_reach AFTER INSERT ON genealogy_edge "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION mes_lot_reach_close()"
    )
    # They run with the owner's rights: nobody calls them but their triggers.
    op.execute("REVOKE EXECUTE ON FUNCTION mes_audit_seal(), mes_lot_reach_close() FROM PUBLIC")


def downgrade() -> None:
    chained = op.get_bind().execute(
        sa.text("SELECT count(*) FROM audit_entry WHERE content_hash IS NOT NULL")
    )
    if chained.scalar_one():
        # Their hashes verify only with content_hash and chain_seq (AT-5, AT-8).
        raise RuntimeError(
            "audit entries were chained by revision 0005; downgrading would drop what verifies them"
        )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER genealogy_edge_reach ON genealogy_edge")
        op.execute("DROP FUNCTION mes_lot_reach_close()")
        op.execute("DROP TRIGGER audit_entry_seal ON audit_entry")
        op.execute("DROP FUNCTION mes_audit_seal()")
        op.execute("DROP TRIGGER audit_entry_append_only ON audit_entry")
        op.execute(
            "CREATE TRIGGER audit_entry_append_only BEFORE UPDATE OR DELETE ON audit_entry "
            "FOR EACH ROW EXECUTE FUNCTION mes_refuse_change()"
        )
        op.execute("DROP FUNCTION mes_audit_guard()")
        op.alter_column("audit_entry", "hash", existing_type=sa.String(64), nullable=False)
        op.alter_column("audit_entry", "prev_hash", existing_type=sa.String(64), nullable=False)
    op.drop_index("ix_audit_entry_chain_seq", table_name="audit_entry")
    # Entries chained after the upgrade keep hashes only the newer formula verifies.
    op.drop_column("audit_entry", "chain_seq")
    op.drop_column("audit_entry", "content_hash")
