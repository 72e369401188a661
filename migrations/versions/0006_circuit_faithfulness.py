"""circuits carry their faithfulness curves

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 17:30:00.000000

Per ablation mode (mean, zero, resample): the faithfulness curve over the pruner's node order and its
CPR / CMD areas. Older circuits get an empty object.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("circuits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("faithfulness", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("circuits", schema=None) as batch_op:
        batch_op.drop_column("faithfulness")
