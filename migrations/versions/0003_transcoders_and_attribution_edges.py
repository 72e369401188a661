"""transcoders and attribution edges

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 04:30:19.587238
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "transcoders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("sweep", sa.JSON(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("artifact_path", sa.String(length=512), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_transcoders_model_id_models"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transcoders")),
    )
    with op.batch_alter_table("transcoders", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_transcoders_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_transcoders_model_id"), ["model_id"], unique=False)

    with op.batch_alter_table("circuit_edges", schema=None) as batch_op:
        batch_op.add_column(sa.Column("activation", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("weight_product", sa.Float(), nullable=True))

    with op.batch_alter_table("circuits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("transcoder_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_circuits_transcoder_id"), ["transcoder_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_circuits_transcoder_id_transcoders"),
            "transcoders",
            ["transcoder_id"],
            ["id"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    with op.batch_alter_table("circuits", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_circuits_transcoder_id_transcoders"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_circuits_transcoder_id"))
        batch_op.drop_column("transcoder_id")

    with op.batch_alter_table("circuit_edges", schema=None) as batch_op:
        batch_op.drop_column("weight_product")
        batch_op.drop_column("activation")

    with op.batch_alter_table("transcoders", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_transcoders_model_id"))
        batch_op.drop_index(batch_op.f("ix_transcoders_created_at"))

    op.drop_table("transcoders")
