"""jobs remember when their queue message was last published

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 17:30:00.000000

A queued job whose message was lost (Redis restarted without persistence, or the API died between
committing the row and publishing) is published again by the workers' sweep once it has waited
CIRCUITS_REPUBLISH_AFTER_SECONDS since `published_at` (or `created_at` if it was never published).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("published_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE jobs SET published_at = created_at")


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("published_at")
