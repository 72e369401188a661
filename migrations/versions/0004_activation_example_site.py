"""activation examples name their site

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 09:00:00.000000

Rows of one site were found by matching the node name's prefix (`node LIKE 'site[%'`); the site is a
column now, backfilled from the node name (`site[index]`: everything before the first bracket).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("activation_examples", schema=None) as batch_op:
        batch_op.add_column(sa.Column("site", sa.String(length=48), nullable=True))
    if op.get_bind().dialect.name == "sqlite":
        site = "substr(node, 1, instr(node, '[') - 1)"
    else:
        site = "split_part(node, '[', 1)"
    op.execute(f"UPDATE activation_examples SET site = {site}")
    with op.batch_alter_table("activation_examples", schema=None) as batch_op:
        batch_op.alter_column("site", existing_type=sa.String(length=48), nullable=False)
        batch_op.create_index("ix_activation_examples_model_site", ["model_id", "site"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("activation_examples", schema=None) as batch_op:
        batch_op.drop_index("ix_activation_examples_model_site")
        batch_op.drop_column("site")
