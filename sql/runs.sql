-- name: insert_run
-- $1 id, $2 shard, $3 workflow_id, $4 workflow_version, $5 owner_id, $6 trigger_type, $7 input,
-- $8 timeout_s, $9 scheduled_for, $10 parent_run_id, $11 parent_step_id, $12 parent_attempt,
-- $13 created_by, $14 schedule_id, $15 audit user (NULL: no audit entry), $16 audit request id,
-- $17 audit changes. The run row is the durable start command; its first event says so, and
-- its audit entry is written by the same statement (one round trip, one transaction).
-- Returns no row when the workflow is no longer published (the caller read it before), or
-- when the parent's step attempt already has its child run.
WITH run AS (
    INSERT INTO runs (id, shard, workflow_id, workflow_version, owner_id, trigger_type, input,
                      timeout_s, scheduled_for, parent_run_id, parent_step_id, parent_attempt,
                      created_by, schedule_id, last_seq)
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 1
    WHERE EXISTS (SELECT 1 FROM workflows WHERE id = $3 AND status = 'published')
    ON CONFLICT DO NOTHING
    RETURNING *
), created AS (
    INSERT INTO run_events (run_id, seq, event, data)
    SELECT id, 1, 'run.created', jsonb_build_object('trigger_type', trigger_type)
    FROM run
), audited AS (
    INSERT INTO audit_logs (user_id, owner_id, action, entity_type, entity_id, changes,
                            request_id)
    SELECT $15, owner_id, 'start', 'run', id::text, $17, $16
    FROM run WHERE $15::text IS NOT NULL
)
SELECT * FROM run;

-- name: get_child_run
-- $1 parent_run_id, $2 parent_step_id, $3 parent_attempt
SELECT * FROM runs
WHERE parent_run_id = $1 AND parent_step_id = $2 AND parent_attempt = $3;

-- name: get_run
-- $1 id, $2 owner_id (NULL: any owner)
SELECT * FROM runs WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2);

-- name: get_run_detail
-- $1 id, $2 owner_id (NULL: any owner). The run with its steps (id, status, output, in the order
-- of list_run_steps) as a JSON array: one statement, so both describe the same moment.
SELECT r.*,
       coalesce(jsonb_agg(jsonb_build_object('step_id', s.step_id, 'status', s.status,
                                             'output', s.output)
                          ORDER BY s.started_at NULLS LAST, s.step_id)
                FILTER (WHERE s.step_id IS NOT NULL), '[]') AS steps
FROM runs r LEFT JOIN run_steps s ON s.run_id = r.id
WHERE r.id = $1 AND ($2::text IS NULL OR r.owner_id = $2)
GROUP BY r.id;

-- name: get_run_for_actor
-- $1 id
SELECT r.*, w.definition FROM runs r JOIN workflows w ON w.id = r.workflow_id WHERE r.id = $1;

-- name: list_runs
-- $1 owner_id (NULL: all), $2 workflow_id, $3 status, $4 trigger_type, $5 created since,
-- $6 created before, $7 limit, $8 offset
SELECT id, shard, workflow_id, workflow_version, owner_id, status, trigger_type, input, output,
       error, parent_run_id, parent_step_id, scheduled_for, timeout_s, deadline_at, last_seq,
       created_by, created_at, started_at, completed_at, updated_at,
       count(*) OVER () AS total
FROM runs
WHERE ($1::text IS NULL OR owner_id = $1)
  AND ($2::uuid IS NULL OR workflow_id = $2)
  AND ($3::text IS NULL OR status = $3)
  AND ($4::text IS NULL OR trigger_type = $4)
  AND ($5::timestamptz IS NULL OR created_at >= $5)
  AND ($6::timestamptz IS NULL OR created_at < $6)
ORDER BY created_at DESC, id
LIMIT $7 OFFSET $8;

-- name: list_run_steps
-- $1 run_id
SELECT step_id, status, attempt, output, error, wake_at, started_at, completed_at
FROM run_steps WHERE run_id = $1
ORDER BY started_at NULLS LAST, step_id;

-- name: list_step_attempts
-- $1 run_id
SELECT step_id, attempt, status, output, error, recorded_at
FROM step_attempts WHERE run_id = $1 ORDER BY recorded_at, step_id, attempt;

-- name: list_active_runs
-- $1 shards
SELECT id, shard FROM runs
WHERE shard = ANY($1::int[]) AND status IN ('pending', 'running', 'paused');

-- name: list_runs_needing_attention
-- $1 shards; runs with undelivered commands, and runs nobody has started yet
SELECT DISTINCT r.id, r.shard FROM runs r
LEFT JOIN run_commands c ON c.run_id = r.id AND c.processed_at IS NULL
WHERE r.shard = ANY($1::int[])
  AND (c.id IS NOT NULL OR r.status = 'pending');

-- name: set_run_deadline
-- $1 run_id, $2 deadline_at
UPDATE runs SET deadline_at = $2 WHERE id = $1 AND deadline_at IS NULL;

-- name: persist_run_changes
-- Group commit: the changes of many runs (each run at most once) in one statement, so one
-- transaction and one WAL flush. $1 node_id; $2 one JSON document of arrays of objects:
--   runs:     id, shard, token (fencing), n_events, status (NULL: unchanged), error, output,
--             expect (the last_seq the run must be at; NULL: any; see below)
--   steps:    run_id, step_id, status, attempt, output, error, wake_at
--   events:   run_id, ord (position within its run's change: 1, 2, ...), event, step_id, data
--   commands: run_id, id, outcome (commands this change completes)
--   attempts: run_id, step_id, attempt, result, output, error (finished attempts, write-once)
-- `expect` is for a change sent before the commit of the change it follows: it waits on the
-- run row's lock for that commit and applies only if the run is then exactly there;
-- otherwise it writes nothing.
-- A run's rows are written only while this node holds its shard's lease with that token.
-- Times are clock_timestamp(), not the transaction's start: a change that waited for the one
-- before it must not carry an earlier time.
-- Returns (id, base_seq) for each run within its lease: base_seq is the seq before its first
-- new event, or NULL when the change did not apply (its predecessor had not committed). A run
-- missing from the result was fenced off.
WITH changed AS (
    SELECT * FROM jsonb_to_recordset($2::jsonb -> 'runs')
        AS c(id uuid, shard int, token bigint, n_events int, status text, error jsonb,
             output jsonb, expect bigint)
), fenced AS (
    SELECT c.* FROM changed c
    JOIN shard_leases l ON l.shard = c.shard AND l.owner = $1 AND l.token = c.token
                       AND l.expires_at > now()
), run AS (
    -- The WHERE names only the id, so a row being changed by a transaction in flight is
    -- waited for and then re-read (READ COMMITTED): whether the change fits is decided on
    -- that latest version. A change that does not fit leaves the row as it was.
    UPDATE runs r SET
        last_seq = r.last_seq + CASE WHEN f.expect IS NULL OR f.expect = r.last_seq
                                     THEN f.n_events ELSE 0 END,
        status = CASE WHEN f.expect IS NULL OR f.expect = r.last_seq
                      THEN coalesce(f.status, r.status) ELSE r.status END,
        error = CASE WHEN (f.expect IS NULL OR f.expect = r.last_seq) AND f.status IS NOT NULL
                     THEN f.error ELSE r.error END,
        output = CASE WHEN f.expect IS NULL OR f.expect = r.last_seq
                      THEN coalesce(f.output, r.output) ELSE r.output END,
        started_at = CASE WHEN (f.expect IS NULL OR f.expect = r.last_seq)
                               AND f.status = 'running' THEN coalesce(r.started_at, clock_timestamp())
                          ELSE r.started_at END,
        completed_at = CASE WHEN (f.expect IS NOT NULL AND f.expect <> r.last_seq)
                                 OR f.status IS NULL THEN r.completed_at
                            WHEN f.status IN ('succeeded', 'failed', 'cancelled') THEN clock_timestamp()
                            END,
        updated_at = CASE WHEN f.expect IS NULL OR f.expect = r.last_seq
                          THEN clock_timestamp() ELSE r.updated_at END
    FROM fenced f
    WHERE r.id = f.id
    -- Applied: the seq before its events is the expected one (a change that did not fit
    -- left last_seq below it).
    RETURNING r.id, r.last_seq - f.n_events AS base_seq,
              f.expect IS NULL OR r.last_seq - f.n_events = f.expect AS fits
), applied AS (
    SELECT id, base_seq FROM run WHERE fits
), steps AS (
    INSERT INTO run_steps AS s (run_id, step_id, status, attempt, output, error, wake_at,
                                started_at, completed_at)
    SELECT c.run_id, c.step_id, c.status, c.attempt, c.output, c.error, c.wake_at,
           CASE WHEN c.status IN ('running', 'succeeded', 'failed') THEN clock_timestamp() END,
           CASE WHEN c.status IN ('succeeded', 'failed', 'skipped', 'cancelled') THEN clock_timestamp() END
    FROM jsonb_to_recordset($2::jsonb -> 'steps')
        AS c(run_id uuid, step_id text, status text, attempt int, output jsonb, error jsonb,
             wake_at timestamptz)
    JOIN applied run ON run.id = c.run_id
    ON CONFLICT (run_id, step_id) DO UPDATE SET
        status = EXCLUDED.status, attempt = EXCLUDED.attempt, output = EXCLUDED.output,
        error = EXCLUDED.error, wake_at = EXCLUDED.wake_at,
        started_at = CASE WHEN EXCLUDED.status = 'running' THEN clock_timestamp()
                          ELSE coalesce(s.started_at, EXCLUDED.started_at) END,
        completed_at = EXCLUDED.completed_at
), attempts AS (
    INSERT INTO step_attempts (run_id, step_id, attempt, status, output, error)
    SELECT a.run_id, a.step_id, a.attempt, a.result, a.output, a.error
    FROM jsonb_to_recordset($2::jsonb -> 'attempts')
        AS a(run_id uuid, step_id text, attempt int, result text, output jsonb, error jsonb)
    JOIN applied run ON run.id = a.run_id
    ON CONFLICT DO NOTHING
), events AS (
    INSERT INTO run_events (run_id, seq, event, step_id, data, at)
    SELECT e.run_id, run.base_seq + e.ord, e.event, e.step_id, e.data, clock_timestamp()
    FROM jsonb_to_recordset($2::jsonb -> 'events')
        AS e(run_id uuid, ord int, event text, step_id text, data jsonb)
    JOIN applied run ON run.id = e.run_id
), commands AS (
    UPDATE run_commands rc SET processed_at = clock_timestamp(), outcome = d.outcome
    FROM jsonb_to_recordset($2::jsonb -> 'commands') AS d(run_id uuid, id bigint, outcome text)
    JOIN applied run ON run.id = d.run_id
    WHERE rc.id = d.id
)
SELECT f.id, a.base_seq FROM fenced f LEFT JOIN applied a ON a.id = f.id;
