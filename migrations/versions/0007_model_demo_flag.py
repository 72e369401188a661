"""models carry a demo flag

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 20:40:00.000000

True for the rows of the demo bundle (a shipped sparse model, its dense twin, their profiles and
circuits) loaded into a fresh data dir; every existing model was trained here, so false.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("demo", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("demo")
