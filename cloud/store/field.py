"""The field dataset's table (cloud/dataset): one row per record, keyed by (edge_id, sample_id).

On SQLite it lives in the dataset's own index file (dataset.path/index.sqlite, created by
`cloud.dataset.store`), so the dataset's folder is whole by itself; on PostgreSQL it is part of the
store's schema (`cloud.store.pg`), shared by every replica.
"""

FIELD_RECORDS_TABLE = """CREATE TABLE IF NOT EXISTS field_records (
    edge_id     TEXT NOT NULL,
    sample_id   TEXT NOT NULL,
    camera_id   TEXT NOT NULL,
    kept_at     REAL NOT NULL,
    file        TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    dhash       TEXT NOT NULL,
    labels      TEXT NOT NULL,
    record      TEXT NOT NULL,
    PRIMARY KEY (edge_id, sample_id)
)"""
FIELD_RECORDS_BY_CAMERA = (
    "CREATE INDEX IF NOT EXISTS field_records_camera ON field_records (edge_id, camera_id, labels, kept_at)"
)
FIELD_RECORDS_BY_TIME = "CREATE INDEX IF NOT EXISTS field_records_kept_at ON field_records (kept_at)"
FIELD_STATEMENTS = (FIELD_RECORDS_TABLE, FIELD_RECORDS_BY_CAMERA, FIELD_RECORDS_BY_TIME)
