"""bin thresholds and example end offsets

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 01:53:40.118856
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("activation_examples", schema=None) as batch_op:
        batch_op.add_column(sa.Column("end", sa.Integer(), nullable=True))

    with op.batch_alter_table("node_stats", schema=None) as batch_op:
        batch_op.add_column(sa.Column("thresholds", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("node_stats", schema=None) as batch_op:
        batch_op.drop_column("thresholds")

    with op.batch_alter_table("activation_examples", schema=None) as batch_op:
        batch_op.drop_column("end")
