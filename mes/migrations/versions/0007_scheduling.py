"""scheduling runs, changeovers, calendars, job leases

Operations get the unit and run of the published schedule (plain columns: adding a foreign
key to a referenced table would make SQLite rebuild it).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 04:02:08.461421
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import mes.models.base

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_lease",
        sa.Column("name", sa.String(length=60), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("acquired_at", mes.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", mes.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_job_lease")),
    )
    op.create_table(
        "schedule_run",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", mes.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", mes.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("trigger", sa.String(length=40), nullable=False),
        sa.Column("trigger_detail", sa.String(length=1000), nullable=True),
        sa.Column("requested_by", sa.String(length=64), nullable=False),
        sa.Column("horizon_start", mes.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("time_limit_s", sa.Integer(), nullable=False),
        sa.Column("objective", sa.String(length=30), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("started_at", mes.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", mes.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("solver_status", sa.String(length=20), nullable=True),
        sa.Column("method", sa.String(length=20), nullable=True),
        sa.Column("objective_value", sa.Float(), nullable=True),
        sa.Column("bound", sa.Float(), nullable=True),
        sa.Column("gap", sa.Float(), nullable=True),
        sa.Column("makespan_min", sa.Integer(), nullable=True),
        sa.Column("total_tardiness_min", sa.Integer(), nullable=True),
        sa.Column("solve_s", sa.Float(), nullable=True),
        sa.Column("error", sa.String(length=2000), nullable=True),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("published_at", mes.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("published_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedule_run")),
    )
    with op.batch_alter_table("schedule_run", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_schedule_run_status"), ["status"], unique=False)

    op.create_table(
        "changeover_rule",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", mes.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", mes.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("scope_code", sa.String(length=50), nullable=False),
        sa.Column("equipment_class_id", sa.Uuid(), nullable=True),
        sa.Column("equipment_id", sa.Uuid(), nullable=True),
        sa.Column("from_family", sa.String(length=40), nullable=False),
        sa.Column("to_family", sa.String(length=40), nullable=False),
        sa.Column("minutes", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["equipment_class_id"],
            ["equipment_class.id"],
            name=op.f("fk_changeover_rule_equipment_class_id_equipment_class"),
        ),
        sa.ForeignKeyConstraint(
            ["equipment_id"],
            ["equipment.id"],
            name=op.f("fk_changeover_rule_equipment_id_equipment"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_changeover_rule")),
        sa.UniqueConstraint(
            "scope_code",
            "from_family",
            "to_family",
            name=op.f("uq_changeover_rule_scope_code_from_family_to_family"),
        ),
    )
    op.create_table(
        "equipment_calendar",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", mes.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", mes.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("equipment_id", sa.Uuid(), nullable=False),
        sa.Column("timezone", sa.String(length=60), nullable=False),
        sa.Column("shifts", sa.JSON(), nullable=False),
        sa.Column("updated_by", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["equipment_id"],
            ["equipment.id"],
            name=op.f("fk_equipment_calendar_equipment_id_equipment"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_equipment_calendar")),
        sa.UniqueConstraint("equipment_id", name=op.f("uq_equipment_calendar_equipment_id")),
    )
    op.create_table(
        "unavailable_window",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", mes.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", mes.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("equipment_id", sa.Uuid(), nullable=False),
        sa.Column("start", mes.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("end", mes.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("cancelled", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["equipment_id"],
            ["equipment.id"],
            name=op.f("fk_unavailable_window_equipment_id_equipment"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_unavailable_window")),
    )
    with op.batch_alter_table("unavailable_window", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_unavailable_window_equipment_id"), ["equipment_id"], unique=False
        )

    with op.batch_alter_table("operation", schema=None) as batch_op:
        batch_op.add_column(sa.Column("planned_equipment_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("schedule_run_id", sa.Uuid(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("operation", schema=None) as batch_op:
        batch_op.drop_column("schedule_run_id")
        batch_op.drop_column("planned_equipment_id")

    with op.batch_alter_table("unavailable_window", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_unavailable_window_equipment_id"))

    op.drop_table("unavailable_window")
    op.drop_table("equipment_calendar")
    op.drop_table("changeover_rule")
    with op.batch_alter_table("schedule_run", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_schedule_run_status"))

    op.drop_table("schedule_run")
    op.drop_table("job_lease")
