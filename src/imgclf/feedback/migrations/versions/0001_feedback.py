"""Feedback records and the images they cite.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feedback_blobs",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name="pk_feedback_blobs"),
    )
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("version", sa.String(200), nullable=False),
        sa.Column("predicted_label", sa.String(500), nullable=True),
        sa.Column("predicted_score", sa.Float(), nullable=True),
        sa.Column("label", sa.String(500), nullable=False),
        sa.Column("client", sa.String(200), nullable=False),
        sa.Column("submitted_by", sa.String(200), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reviewed_by", sa.String(200), nullable=True),
        sa.ForeignKeyConstraint(["sha256"], ["feedback_blobs.sha256"], name="fk_feedback_sha256_feedback_blobs"),
        sa.PrimaryKeyConstraint("id", name="pk_feedback"),
    )
    op.create_index("ix_feedback_sha256", "feedback", ["sha256"])
    op.create_index("ix_feedback_status_model", "feedback", ["status", "model"])


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("feedback_blobs")
