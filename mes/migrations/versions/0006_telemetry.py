"""telemetry tags, samples, latest values, gaps, rejects

The sample key (tag, source time, source) is what de-duplicates a redelivered value, and is
also the index of every per-tag time-range query.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 00:41:37.984529
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import mes.models.base

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ingest_reject",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.Column("reason", sa.String(length=40), nullable=False),
        sa.Column("detail", sa.String(length=500), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("at", mes.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_ingest_reject")),
    )
    with op.batch_alter_table("ingest_reject", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ingest_reject_source"), ["source"], unique=False)

    op.create_table(
        "telemetry_gap",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.Column("tag", sa.String(length=200), nullable=True),
        sa.Column("start", mes.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("end", mes.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("first_seq", sa.BigInteger(), nullable=True),
        sa.Column("last_seq", sa.BigInteger(), nullable=True),
        sa.Column("recorded_at", mes.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_telemetry_gap")),
    )
    with op.batch_alter_table("telemetry_gap", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_telemetry_gap_source"), ["source"], unique=False)

    op.create_table(
        "telemetry_tag",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("uom", sa.String(length=20), nullable=True),
        sa.Column("equipment_code", sa.String(length=40), nullable=True),
        sa.Column("room_code", sa.String(length=40), nullable=True),
        sa.Column("description", sa.String(length=500), nullable=True),
        sa.Column("alert_low", sa.Float(), nullable=True),
        sa.Column("alert_high", sa.Float(), nullable=True),
        sa.Column("action_low", sa.Float(), nullable=True),
        sa.Column("action_high", sa.Float(), nullable=True),
        sa.Column("alarm_delay_s", sa.Float(), nullable=False),
        sa.Column("hysteresis", sa.Float(), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=True),
        sa.Column("states", sa.JSON(), nullable=True),
        sa.Column("ideal_cycle_s", sa.Float(), nullable=True),
        sa.Column("raw_retention_days", sa.Integer(), nullable=True),
        sa.Column("created_at", mes.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_telemetry_tag")),
        sa.UniqueConstraint("tag", name=op.f("uq_telemetry_tag_tag")),
    )
    with op.batch_alter_table("telemetry_tag", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_telemetry_tag_equipment_code"), ["equipment_code"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_telemetry_tag_room_code"), ["room_code"], unique=False)

    op.create_table(
        "telemetry_latest",
        sa.Column("tag_id", sa.Integer(), nullable=False),
        sa.Column("source_ts", mes.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.Column("value_num", sa.Float(), nullable=True),
        sa.Column("value_text", sa.String(length=200), nullable=True),
        sa.Column("quality", sa.String(length=10), nullable=False),
        sa.Column("stored_at", mes.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tag_id"], ["telemetry_tag.id"], name=op.f("fk_telemetry_latest_tag_id_telemetry_tag")
        ),
        sa.PrimaryKeyConstraint("tag_id", name=op.f("pk_telemetry_latest")),
    )
    op.create_table(
        "telemetry_sample",
        sa.Column("tag_id", sa.Integer(), nullable=False),
        sa.Column("source_ts", mes.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.Column("value_num", sa.Float(), nullable=True),
        sa.Column("value_text", sa.String(length=200), nullable=True),
        sa.Column("quality", sa.String(length=10), nullable=False),
        sa.Column("status_code", sa.BigInteger(), nullable=True),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("flags", sa.String(length=100), nullable=True),
        sa.Column("received_ts", mes.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tag_id"], ["telemetry_tag.id"], name=op.f("fk_telemetry_sample_tag_id_telemetry_tag")
        ),
        sa.PrimaryKeyConstraint("tag_id", "source_ts", "source", name=op.f("pk_telemetry_sample")),
    )

    op.create_table(
        "telemetry_alarm",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tag", sa.String(length=200), nullable=False),
        sa.Column("level", sa.String(length=10), nullable=False),
        sa.Column("direction", sa.String(length=4), nullable=False),
        sa.Column("limit_value", sa.Float(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("peak", sa.Float(), nullable=False),
        sa.Column("started_at", mes.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("raised_at", mes.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("cleared_at", mes.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("work_order_id", sa.Uuid(), nullable=True),
        sa.Column("operation_id", sa.Uuid(), nullable=True),
        sa.Column("parameter", sa.String(length=60), nullable=True),
        sa.Column("deviation_id", sa.Uuid(), nullable=True),
        sa.Column("acknowledged_by", sa.String(length=64), nullable=True),
        sa.Column("acknowledged_at", mes.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["work_order_id"],
            ["work_order.id"],
            name=op.f("fk_telemetry_alarm_work_order_id_work_order"),
        ),
        sa.ForeignKeyConstraint(
            ["operation_id"],
            ["operation.id"],
            name=op.f("fk_telemetry_alarm_operation_id_operation"),
        ),
        sa.ForeignKeyConstraint(
            ["deviation_id"],
            ["deviation.id"],
            name=op.f("fk_telemetry_alarm_deviation_id_deviation"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_telemetry_alarm")),
    )
    with op.batch_alter_table("telemetry_alarm", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_telemetry_alarm_raised_at"), ["raised_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_telemetry_alarm_tag"), ["tag"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_telemetry_alarm_work_order_id"), ["work_order_id"], unique=False
        )

    op.create_table(
        "telemetry_rollup",
        sa.Column("tag_id", sa.Integer(), nullable=False),
        sa.Column("hour_start", mes.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("min", sa.Float(), nullable=True),
        sa.Column("max", sa.Float(), nullable=True),
        sa.Column("sum", sa.Float(), nullable=True),
        sa.Column("rolled_at", mes.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tag_id"], ["telemetry_tag.id"], name=op.f("fk_telemetry_rollup_tag_id_telemetry_tag")
        ),
        sa.PrimaryKeyConstraint("tag_id", "hour_start", name=op.f("pk_telemetry_rollup")),
    )


def downgrade() -> None:
    op.drop_table("telemetry_rollup")
    op.drop_table("telemetry_alarm")
    op.drop_table("telemetry_sample")
    op.drop_table("telemetry_latest")
    with op.batch_alter_table("telemetry_tag", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_telemetry_tag_room_code"))
        batch_op.drop_index(batch_op.f("ix_telemetry_tag_equipment_code"))

    op.drop_table("telemetry_tag")
    with op.batch_alter_table("telemetry_gap", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_telemetry_gap_source"))

    op.drop_table("telemetry_gap")
    with op.batch_alter_table("ingest_reject", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ingest_reject_source"))

    op.drop_table("ingest_reject")
