"""lot_reach: the transitive closure of genealogy_edge; shipments index covering the recall

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 13:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from mes.migrations.append_only import make_append_only

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every (ancestor, descendant) pair joined by a path of edges. UNION drops pairs already found,
# so each pair is expanded once however many paths lead to it (and the walk ends on any graph).
PAIRS = """
WITH RECURSIVE reach(ancestor_lot_id, descendant_lot_id) AS (
    SELECT parent_lot_id, child_lot_id FROM genealogy_edge
    UNION
    SELECT reach.ancestor_lot_id, genealogy_edge.child_lot_id
    FROM reach JOIN genealogy_edge ON genealogy_edge.parent_lot_id = reach.descendant_lot_id
)
SELECT ancestor_lot_id, descendant_lot_id FROM reach
"""


SHIPPED = sa.text("kind = 'shipped'")
SHIPMENT_COLUMNS = ["at", "quantity", "uom", "consignee"]


def _shipments_index(include: list[str]) -> None:
    op.drop_index("ix_material_transaction_shipped_lot_id", table_name="material_transaction")
    op.create_index(
        "ix_material_transaction_shipped_lot_id",
        "material_transaction",
        ["lot_id"],
        postgresql_where=SHIPPED,
        postgresql_include=include,
    )


def upgrade() -> None:
    op.create_table(
        "lot_reach",
        sa.Column("ancestor_lot_id", sa.Uuid(), nullable=False),
        sa.Column("descendant_lot_id", sa.Uuid(), nullable=False),
        sa.PrimaryKeyConstraint("ancestor_lot_id", "descendant_lot_id", name=op.f("pk_lot_reach")),
    )
    op.execute(f"INSERT INTO lot_reach (ancestor_lot_id, descendant_lot_id) {PAIRS}")
    make_append_only(["lot_reach"])
    if op.get_bind().dialect.name == "postgresql":
        _shipments_index(SHIPMENT_COLUMNS)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _shipments_index([])
    op.drop_table("lot_reach")
