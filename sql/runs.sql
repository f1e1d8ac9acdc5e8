-- name: insert_run
-- $1 id, $2 shard, $3 workflow_id, $4 workflow_version, $5 owner_id, $6 trigger_type, $7 input,
-- $8 timeout_s, $9 scheduled_for, $10 parent_run_id, $11 parent_step_id, $12 parent_attempt,
-- $13 created_by, $14 schedule_id. The run row is the durable start command; its first event
-- says so.
-- Returns no row when the parent's step attempt already has its child run.
WITH run AS (
    INSERT INTO runs (id, shard, workflow_id, workflow_version, owner_id, trigger_type, input,
                      timeout_s, scheduled_for, parent_run_id, parent_step_id, parent_attempt,
                      created_by, schedule_id, last_seq)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 1)
    ON CONFLICT DO NOTHING
    RETURNING *
), created AS (
    INSERT INTO run_events (run_id, seq, event, data)
    SELECT id, 1, 'run.created', jsonb_build_object('trigger_type', trigger_type)
    FROM run
)
SELECT * FROM run;

-- name: get_child_run
-- $1 parent_run_id, $2 parent_step_id, $3 parent_attempt
SELECT * FROM runs
WHERE parent_run_id = $1 AND parent_step_id = $2 AND parent_attempt = $3;

-- name: get_run
-- $1 id, $2 owner_id (NULL: any owner)
SELECT * FROM runs WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2);

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
-- transaction and one WAL flush. All arrays are parallel within their group:
-- $1 node_id;
-- runs: $2 ids, $3 shards, $4 fencing tokens, $5 event counts, $6 new statuses (NULL: unchanged),
--       $7 errors, $8 outputs;
-- step changes: $9 run ids, $10 step ids, $11 statuses, $12 attempts, $13 outputs, $14 errors,
--       $15 wake_ats;
-- events: $16 run ids, $17 position within their run's change (1, 2, ...), $18 names,
--       $19 step ids, $20 data;
-- commands completed: $21 run ids, $22 command ids, $23 outcomes;
-- finished attempts (write-once): $24 run ids, $25 step ids, $26 attempts, $27 results,
--       $28 outputs, $29 errors.
-- A run's rows are written only while this node holds its shard's lease with that token.
-- Returns (id, base_seq) for each run written: the seq before its first new event. A run
-- missing from the result was fenced off.
WITH changed AS (
    SELECT * FROM unnest($2::uuid[], $3::int[], $4::bigint[], $5::int[], $6::text[],
                         $7::jsonb[], $8::jsonb[])
        AS c(id, shard, token, n_events, status, error, output)
), fenced AS (
    SELECT c.* FROM changed c
    JOIN shard_leases l ON l.shard = c.shard AND l.owner = $1 AND l.token = c.token
                       AND l.expires_at > now()
), run AS (
    UPDATE runs r SET
        last_seq = r.last_seq + f.n_events,
        status = coalesce(f.status, r.status),
        error = CASE WHEN f.status IS NULL THEN r.error ELSE f.error END,
        output = coalesce(f.output, r.output),
        started_at = CASE WHEN f.status = 'running' THEN coalesce(r.started_at, now())
                          ELSE r.started_at END,
        completed_at = CASE WHEN f.status IN ('succeeded', 'failed', 'cancelled') THEN now()
                            WHEN f.status IS NOT NULL THEN NULL
                            ELSE r.completed_at END,
        updated_at = now()
    FROM fenced f
    WHERE r.id = f.id
    RETURNING r.id, r.last_seq - f.n_events AS base_seq
), steps AS (
    INSERT INTO run_steps AS s (run_id, step_id, status, attempt, output, error, wake_at,
                                started_at, completed_at)
    SELECT c.run_id, c.step_id, c.status, c.attempt, c.output, c.error, c.wake_at,
           CASE WHEN c.status IN ('running', 'succeeded', 'failed') THEN now() END,
           CASE WHEN c.status IN ('succeeded', 'failed', 'skipped', 'cancelled') THEN now() END
    FROM unnest($9::uuid[], $10::text[], $11::text[], $12::int[], $13::jsonb[], $14::jsonb[],
                $15::timestamptz[]) AS c(run_id, step_id, status, attempt, output, error, wake_at)
    JOIN run ON run.id = c.run_id
    ON CONFLICT (run_id, step_id) DO UPDATE SET
        status = EXCLUDED.status, attempt = EXCLUDED.attempt, output = EXCLUDED.output,
        error = EXCLUDED.error, wake_at = EXCLUDED.wake_at,
        started_at = CASE WHEN EXCLUDED.status = 'running' THEN now()
                          ELSE coalesce(s.started_at, EXCLUDED.started_at) END,
        completed_at = EXCLUDED.completed_at
), attempts AS (
    INSERT INTO step_attempts (run_id, step_id, attempt, status, output, error)
    SELECT a.run_id, a.step_id, a.attempt, a.result, a.output, a.error
    FROM unnest($24::uuid[], $25::text[], $26::int[], $27::text[], $28::jsonb[], $29::jsonb[])
        AS a(run_id, step_id, attempt, result, output, error)
    JOIN run ON run.id = a.run_id
    ON CONFLICT DO NOTHING
), events AS (
    INSERT INTO run_events (run_id, seq, event, step_id, data)
    SELECT e.run_id, run.base_seq + e.ord, e.event, e.step_id, e.data
    FROM unnest($16::uuid[], $17::int[], $18::text[], $19::text[], $20::jsonb[])
        AS e(run_id, ord, event, step_id, data)
    JOIN run ON run.id = e.run_id
), commands AS (
    UPDATE run_commands rc SET processed_at = now(), outcome = d.outcome
    FROM unnest($21::uuid[], $22::bigint[], $23::text[]) AS d(run_id, id, outcome)
    JOIN run ON run.id = d.run_id
    WHERE rc.id = d.id
)
SELECT id, base_seq FROM run;
