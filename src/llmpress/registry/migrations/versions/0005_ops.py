"""aliases and their history, A/B tests, A/B responses, feedback; deployments.alias

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "aliases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("artifact_id", sa.String(64), nullable=False, index=True),
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_table(
        "alias_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("alias", sa.String(64), nullable=False, index=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("artifact_id", sa.String(64), nullable=False),
        sa.Column("prev_event_id", sa.Integer(), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_table(
        "ab_tests",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("alias", sa.String(64), nullable=True),
        sa.Column("arms", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("promoted", sa.String(64), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "ab_responses",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("test", sa.String(64), sa.ForeignKey("ab_tests.name", ondelete="CASCADE"), nullable=False,
                  index=True),
        sa.Column("arm", sa.String(64), nullable=False),
        sa.Column("user", sa.String(255), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("tokens_out", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("response_id", sa.String(64), sa.ForeignKey("ab_responses.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("rating", sa.Float(), nullable=True),
        sa.Column("label", sa.String(255), nullable=True),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    # The 0002 deployments table records server processes; a process that serves an alias says which.
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("alias", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("alias")
    op.drop_table("feedback")
    op.drop_table("ab_responses")
    op.drop_table("ab_tests")
    op.drop_table("alias_events")
    op.drop_table("aliases")
