"""Tables of the registry database (the current schema; migrations/ brings a database up to it).

Records are stored as JSON in `body`; the columns beside it exist to filter, order and constrain.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# SQLite only gives AUTOINCREMENT (never reused, monotonic) to an INTEGER PRIMARY KEY.
Revision = BigInteger().with_variant(Integer(), "sqlite")

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", String(200), nullable=False),
    Column("applied_time", BigInteger, nullable=False),
)

registry_meta = Table(
    "registry_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)

models = Table(
    "models",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("family", String(32), nullable=False),
    Column("body", Text, nullable=False),
    Column("create_time", BigInteger, nullable=False),
    Column("update_time", BigInteger, nullable=False),
)

# Filter indexes of models: one row per task, one per hardware type a variant targets.
model_tasks = Table(
    "model_tasks",
    metadata,
    Column("model_id", String(128), ForeignKey("models.id", ondelete="CASCADE"), primary_key=True),
    Column("task", String(64), primary_key=True),
    Index("ix_model_tasks_task", "task"),
)

model_hardware = Table(
    "model_hardware",
    metadata,
    Column("model_id", String(128), ForeignKey("models.id", ondelete="CASCADE"), primary_key=True),
    Column("hardware_type", String(64), primary_key=True),
    Index("ix_model_hardware_type", "hardware_type"),
)

artifacts = Table(
    "artifacts",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("model_id", String(128), ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
    Column("variant", String(64), nullable=False),
    Column("backend", String(16), nullable=False),
    Column("gpu_arch", String(32), nullable=False),
    Column("shape_profile", String(256), nullable=False),
    Column("body", Text, nullable=False),
    Column("create_time", BigInteger, nullable=False),
    UniqueConstraint("model_id", "variant", "backend", "gpu_arch", "shape_profile", name="uq_artifact_key"),
)

instances = Table(
    "instances",
    metadata,
    Column("id", String(253), primary_key=True),
    Column("hardware_type", String(64), nullable=False),
    # Comma-separated family names, for filtering with LIKE (no family name contains another).
    Column("families", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("heartbeat_time", BigInteger, nullable=False),
    Column("body", Text, nullable=False),
    Index("ix_instances_state_heartbeat", "state", "heartbeat_time"),
)

instance_models = Table(
    "instance_models",
    metadata,
    Column("instance_id", String(253), ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True),
    Column("model_id", String(128), primary_key=True),
    Column("variant", String(64), primary_key=True),
    Index("ix_instance_models_model", "model_id"),
)

# The change log behind Watch: one row per change, revision strictly increasing in commit order.
changes = Table(
    "changes",
    metadata,
    Column("revision", Revision, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("object_id", String(253), nullable=False),
    Column("change_type", String(16), nullable=False),
    Column("body", Text, nullable=False),
    Column("create_time", BigInteger, nullable=False),
    sqlite_autoincrement=True,
)
