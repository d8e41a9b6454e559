"""telemetry samples without a foreign key to the tag registry

Checking the key costs PostgreSQL a lookup and a row lock on ``telemetry_tag`` for every
stored value: more than half of the database's work per sample. The ingest only writes ids
it read from the registry, and tags are never deleted, so the check guards nothing that can
happen; ``telemetry_latest`` (one row per tag) keeps its key.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26 07:40:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FK = "fk_telemetry_sample_tag_id_telemetry_tag"


def upgrade() -> None:
    with op.batch_alter_table("telemetry_sample", schema=None) as batch_op:
        batch_op.drop_constraint(FK, type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("telemetry_sample", schema=None) as batch_op:
        batch_op.create_foreign_key(FK, "telemetry_tag", ["tag_id"], ["id"])
