"""The registry schema as forward migrations: ``MIGRATIONS[i]`` takes version ``i`` to ``i + 1``.

Never edit a released migration; append a new one. A registry whose version is above
``SCHEMA_VERSION`` was written by a newer saekit and is refused.
"""

from __future__ import annotations

JOB_STATES = ("queued", "running", "completed", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")
FINAL_STATES = ("completed", "failed", "cancelled")

MIGRATIONS: list[list[str]] = [
    # 0 -> 1: jobs and their compacted metrics
    [
        """CREATE TABLE saekit_meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)""",
        """CREATE TABLE jobs (
            id VARCHAR PRIMARY KEY,
            kind VARCHAR NOT NULL,
            key VARCHAR NOT NULL,
            active_key VARCHAR UNIQUE,
            name VARCHAR,
            status VARCHAR NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
            spec VARCHAR NOT NULL,
            entry VARCHAR NOT NULL,
            entry_path VARCHAR,
            result VARCHAR,
            error_type VARCHAR,
            error_message VARCHAR,
            suggestion VARCHAR,
            attempt INTEGER NOT NULL DEFAULT 1,
            launcher VARCHAR,
            worker_pid INTEGER,
            worker_host VARCHAR,
            cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
            created_at TIMESTAMP NOT NULL,
            queued_at TIMESTAMP NOT NULL,
            started_at TIMESTAMP,
            finished_at TIMESTAMP,
            CHECK ((active_key IS NOT NULL) = (status IN ('queued', 'running'))),
            CHECK (active_key IS NULL OR active_key = key)
        )""",
        """CREATE INDEX jobs_key ON jobs (key)""",
        """CREATE TABLE metrics (
            job_id VARCHAR NOT NULL,
            step BIGINT NOT NULL,
            name VARCHAR NOT NULL,
            value DOUBLE
        )""",
        """CREATE INDEX metrics_job ON metrics (job_id)""",
    ],
    # 1 -> 2: training templates (configs as JSON)
    [
        """CREATE TABLE templates (
            name VARCHAR PRIMARY KEY,
            description VARCHAR NOT NULL DEFAULT '',
            sae_config VARCHAR NOT NULL,
            train_config VARCHAR NOT NULL,
            favourite BOOLEAN NOT NULL DEFAULT FALSE,
            created_at TIMESTAMP NOT NULL,
            updated_at TIMESTAMP NOT NULL
        )""",
    ],
    # 2 -> 3: feature labels (user and LLM labels of an analysis' latents; every change is a row)
    [
        """CREATE SEQUENCE feature_label_seq""",
        """CREATE TABLE feature_labels (
            seq BIGINT PRIMARY KEY DEFAULT nextval('feature_label_seq'),
            analysis VARCHAR NOT NULL,
            feature INTEGER NOT NULL,
            label VARCHAR NOT NULL,
            source VARCHAR NOT NULL CHECK (source IN ('user', 'llm')),
            author VARCHAR NOT NULL,
            note VARCHAR,
            provenance VARCHAR,
            scores VARCHAR,
            created_at TIMESTAMP NOT NULL
        )""",
        """CREATE INDEX feature_labels_analysis ON feature_labels (analysis, feature)""",
    ],
    # 3 -> 4: a failed attempt's traceback (the worker's, credentials masked), beside its one-line message
    [
        """ALTER TABLE jobs ADD COLUMN traceback VARCHAR""",
    ],
]

SCHEMA_VERSION = len(MIGRATIONS)
