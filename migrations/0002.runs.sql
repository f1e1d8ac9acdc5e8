-- Durable runs: runs, per-step state, write-once attempt results, gap-free events,
-- durable commands, shard leases with fencing tokens.
-- depends: 0001.foundation

CREATE TABLE runs (
    id               uuid PRIMARY KEY,
    shard            integer NOT NULL,
    workflow_id      uuid NOT NULL REFERENCES workflows (id),
    workflow_version integer NOT NULL,
    owner_id         text NOT NULL,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN
                         ('pending', 'running', 'paused', 'succeeded', 'failed', 'cancelled')),
    trigger_type     text NOT NULL CHECK (trigger_type IN
                         ('api', 'webhook', 'schedule', 'retry', 'subworkflow')),
    input            jsonb NOT NULL DEFAULT '{}',
    output           jsonb,
    error            jsonb,
    parent_run_id    uuid REFERENCES runs (id),
    parent_step_id   text,
    parent_attempt   integer,
    scheduled_for    timestamptz,
    timeout_s        double precision,
    deadline_at      timestamptz,
    last_seq         bigint NOT NULL DEFAULT 0,
    created_by       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    completed_at     timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX runs_owner ON runs (owner_id, created_at DESC);
CREATE INDEX runs_workflow ON runs (workflow_id, created_at DESC);
CREATE INDEX runs_active ON runs (shard) WHERE status IN ('pending', 'running', 'paused');
-- One child run per attempt of a subworkflow step, however often the parent is recovered.
CREATE UNIQUE INDEX runs_child ON runs (parent_run_id, parent_step_id, parent_attempt)
    WHERE parent_run_id IS NOT NULL;

-- The current state of each step of a run.
CREATE TABLE run_steps (
    run_id       uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step_id      text NOT NULL,
    status       text NOT NULL CHECK (status IN
                     ('pending', 'running', 'waiting', 'succeeded', 'failed', 'skipped',
                      'cancelled')),
    attempt      integer NOT NULL DEFAULT 0,
    output       jsonb,
    error        jsonb,
    wake_at      timestamptz,
    started_at   timestamptz,
    completed_at timestamptz,
    PRIMARY KEY (run_id, step_id)
);

-- One row per finished attempt, written once: a second write of the same attempt is a no-op.
CREATE TABLE step_attempts (
    run_id       uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step_id      text NOT NULL,
    attempt      integer NOT NULL,
    status       text NOT NULL,
    output       jsonb,
    error        jsonb,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, step_id, attempt)
);

CREATE TABLE run_events (
    run_id  uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq     bigint NOT NULL,
    event   text NOT NULL,
    step_id text,
    data    jsonb NOT NULL DEFAULT '{}',
    at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE run_commands (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id       uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    kind         text NOT NULL CHECK (kind IN ('cancel', 'resume', 'retry', 'child_done')),
    payload      jsonb NOT NULL DEFAULT '{}',
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz,
    outcome      text
);
CREATE INDEX run_commands_pending ON run_commands (run_id, id) WHERE processed_at IS NULL;

CREATE TABLE nodes (
    node_id      text PRIMARY KEY,
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE shard_leases (
    shard      integer PRIMARY KEY,
    owner      text,
    token      bigint NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO shard_leases (shard) SELECT generate_series(0, 63);
