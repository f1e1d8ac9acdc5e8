-- Training jobs (local or Vertex AI), deployments, online and batch predictions.
-- depends: 0004.ml_data

CREATE TABLE training_jobs (
    id                 uuid PRIMARY KEY,
    shard              integer NOT NULL,
    owner_id           text NOT NULL,
    experiment_id      text,
    model_id           uuid NOT NULL REFERENCES models (id),
    dataset_id         uuid NOT NULL REFERENCES datasets (id),
    dataset_version_id uuid NOT NULL REFERENCES dataset_versions (id),
    backend            text NOT NULL CHECK (backend IN ('local', 'vertex')),
    config             jsonb NOT NULL,
    status             text NOT NULL DEFAULT 'queued' CHECK (status IN
                           ('queued', 'pending', 'running', 'succeeded', 'failed', 'cancelling',
                            'cancelled', 'timed_out')),
    raw_state          text,
    external_id        text,
    error              text,
    metrics            jsonb NOT NULL DEFAULT '{}',
    model_version_id   uuid REFERENCES model_versions (id),
    run_id             uuid REFERENCES runs (id),
    step_id            text,
    cancel_requested   boolean NOT NULL DEFAULT false,
    last_log_seq       bigint NOT NULL DEFAULT 0,
    created_by         text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    started_at         timestamptz,
    completed_at       timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX training_jobs_owner ON training_jobs (owner_id, created_at DESC);
CREATE INDEX training_jobs_active ON training_jobs (shard)
    WHERE status IN ('queued', 'pending', 'running', 'cancelling');
-- A workflow step starts one job per attempt, however often its run is recovered.
CREATE UNIQUE INDEX training_jobs_step ON training_jobs (run_id, step_id) WHERE run_id IS NOT NULL;

CREATE TABLE training_job_logs (
    job_id  uuid NOT NULL REFERENCES training_jobs (id) ON DELETE CASCADE,
    seq     bigint NOT NULL,
    level   text NOT NULL DEFAULT 'info',
    message text NOT NULL,
    at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE training_job_metrics (
    job_id uuid NOT NULL REFERENCES training_jobs (id) ON DELETE CASCADE,
    step   integer NOT NULL,
    name   text NOT NULL,
    value  double precision NOT NULL,
    at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, name, step)
);

CREATE TABLE deployments (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id         text NOT NULL,
    model_id         uuid NOT NULL REFERENCES models (id),
    model_version_id uuid NOT NULL REFERENCES model_versions (id),
    alias            text,
    target           text NOT NULL CHECK (target IN ('local', 'vertex')),
    status           text NOT NULL DEFAULT 'deploying' CHECK (status IN
                         ('deploying', 'deployed', 'failed', 'undeployed')),
    endpoint         text,
    config           jsonb NOT NULL DEFAULT '{}',
    error            text,
    created_by       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deployments_model ON deployments (model_id, created_at DESC);

CREATE TABLE predictions (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id         text NOT NULL,
    model_version_id uuid NOT NULL REFERENCES model_versions (id),
    input_data       jsonb NOT NULL,
    predictions      jsonb NOT NULL,
    probabilities    jsonb,
    latency_ms       double precision NOT NULL,
    created_by       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX predictions_owner ON predictions (owner_id, created_at DESC);

CREATE TABLE batch_prediction_jobs (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id         text NOT NULL,
    model_version_id uuid NOT NULL REFERENCES model_versions (id),
    input_uri        text NOT NULL,
    output_uri       text NOT NULL,
    status           text NOT NULL DEFAULT 'queued' CHECK (status IN
                         ('queued', 'running', 'succeeded', 'failed')),
    rows_total       bigint NOT NULL DEFAULT 0,
    rows_failed      bigint NOT NULL DEFAULT 0,
    failed_rows      jsonb NOT NULL DEFAULT '[]',
    error            text,
    created_by       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz
);
