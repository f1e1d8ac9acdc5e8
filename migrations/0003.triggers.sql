-- Triggers: cron schedules with exactly-once fires, and signed webhooks.
-- depends: 0002.runs

CREATE TABLE schedules (
    id               uuid PRIMARY KEY,
    shard            integer NOT NULL,
    owner_id         text NOT NULL,
    workflow_id      uuid NOT NULL REFERENCES workflows (id),
    name             text NOT NULL DEFAULT '',
    cron             text NOT NULL,
    timezone         text NOT NULL DEFAULT 'UTC',
    input            jsonb NOT NULL DEFAULT '{}',
    enabled          boolean NOT NULL DEFAULT true,
    overlap_policy   text NOT NULL DEFAULT 'skip' CHECK (overlap_policy IN
                         ('skip', 'allow', 'buffer_one', 'cancel_previous')),
    catchup_window_s integer NOT NULL DEFAULT 0 CHECK (catchup_window_s >= 0),
    start_at         timestamptz,
    end_at           timestamptz,
    next_fire_at     timestamptz,
    last_fire_at     timestamptz,
    buffered_fire_at timestamptz,
    disabled_reason  text,
    created_by       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX schedules_owner ON schedules (owner_id, created_at DESC);
CREATE INDEX schedules_due ON schedules (shard, next_fire_at) WHERE enabled;

-- One row per fire time: the primary key is what makes a fire happen at most once.
CREATE TABLE schedule_fires (
    schedule_id uuid NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    fire_time   timestamptz NOT NULL,
    outcome     text NOT NULL CHECK (outcome IN
                    ('started', 'skipped', 'missed', 'buffered', 'failed')),
    run_id      uuid REFERENCES runs (id),
    reason      text,
    lateness_ms double precision,
    node_id     text,
    fired_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule_id, fire_time)
);

ALTER TABLE runs ADD COLUMN schedule_id uuid REFERENCES schedules (id) ON DELETE SET NULL;
CREATE INDEX runs_schedule_active ON runs (schedule_id)
    WHERE schedule_id IS NOT NULL AND status IN ('pending', 'running', 'paused');

CREATE TABLE webhook_secrets (
    workflow_id uuid PRIMARY KEY REFERENCES workflows (id) ON DELETE CASCADE,
    secret      text NOT NULL,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A sender's retries of one delivery return the first run.
CREATE TABLE webhook_deliveries (
    workflow_id uuid NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    delivery_id text NOT NULL,
    run_id      uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, delivery_id)
);
