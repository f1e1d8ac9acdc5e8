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
-- $1 run_id, $2 shard, $3 node_id, $4 fencing token,
-- $5..$10 step changes as parallel arrays: step ids, statuses, attempts, outputs, errors, wake_ats,
-- $11 new run status (NULL: unchanged), $12 run error, $13 run output,
-- $14..$16 events as parallel arrays: names, step ids, data,
-- $17 ids of commands this change completes, $18 their outcome,
-- $19..$23 finished attempts as parallel arrays: step ids, attempts, results, outputs, errors.
-- One statement, so one transaction: step state, write-once attempt results, the run row and
-- its events commit together, and only while this node still holds the shard's lease.
-- Returns the seq before the first new event, or no row when the lease is gone.
WITH lease AS (
    SELECT 1 FROM shard_leases
    WHERE shard = $2 AND owner = $3 AND token = $4 AND expires_at > now()
), run AS (
    UPDATE runs SET
        last_seq = last_seq + cardinality($14::text[]),
        status = coalesce($11::text, status),
        error = CASE WHEN $11::text IS NULL THEN error ELSE $12::jsonb END,
        output = coalesce($13::jsonb, output),
        started_at = CASE WHEN $11::text = 'running' THEN coalesce(started_at, now())
                          ELSE started_at END,
        completed_at = CASE WHEN $11::text IN ('succeeded', 'failed', 'cancelled') THEN now()
                            WHEN $11::text IS NOT NULL THEN NULL
                            ELSE completed_at END,
        updated_at = now()
    WHERE id = $1 AND EXISTS (SELECT 1 FROM lease)
    RETURNING last_seq - cardinality($14::text[]) AS base_seq
), changes AS (
    SELECT * FROM unnest($5::text[], $6::text[], $7::int[], $8::jsonb[], $9::jsonb[],
                         $10::timestamptz[]) AS c(step_id, status, attempt, output, error, wake_at)
), steps AS (
    INSERT INTO run_steps AS s (run_id, step_id, status, attempt, output, error, wake_at,
                                started_at, completed_at)
    SELECT $1, c.step_id, c.status, c.attempt, c.output, c.error, c.wake_at,
           CASE WHEN c.status IN ('running', 'succeeded', 'failed') THEN now() END,
           CASE WHEN c.status IN ('succeeded', 'failed', 'skipped', 'cancelled') THEN now() END
    FROM changes c, run
    ON CONFLICT (run_id, step_id) DO UPDATE SET
        status = EXCLUDED.status, attempt = EXCLUDED.attempt, output = EXCLUDED.output,
        error = EXCLUDED.error, wake_at = EXCLUDED.wake_at,
        started_at = CASE WHEN EXCLUDED.status = 'running' THEN now()
                          ELSE coalesce(s.started_at, EXCLUDED.started_at) END,
        completed_at = EXCLUDED.completed_at
), attempts AS (
    INSERT INTO step_attempts (run_id, step_id, attempt, status, output, error)
    SELECT $1, a.step_id, a.attempt, a.result, a.output, a.error
    FROM run, unnest($19::text[], $20::int[], $21::text[], $22::jsonb[], $23::jsonb[])
        AS a(step_id, attempt, result, output, error)
    ON CONFLICT DO NOTHING
), events AS (
    INSERT INTO run_events (run_id, seq, event, step_id, data)
    SELECT $1, run.base_seq + e.ord, e.event, e.step_id, e.data
    FROM run, unnest($14::text[], $15::text[], $16::jsonb[])
        WITH ORDINALITY AS e(event, step_id, data, ord)
), commands AS (
    UPDATE run_commands SET processed_at = now(), outcome = $18
    WHERE id = ANY($17::bigint[]) AND EXISTS (SELECT 1 FROM run)
)
SELECT base_seq FROM run;
