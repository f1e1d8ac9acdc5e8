-- name: insert_run
-- $1 id, $2 shard, $3 workflow_id, $4 workflow_version, $5 owner_id, $6 trigger_type, $7 input,
-- $8 timeout_s, $9 scheduled_for, $10 parent_run_id, $11 parent_step_id, $12 parent_attempt,
-- $13 created_by, $14 schedule_id, $15 audit user (NULL: no audit entry), $16 audit request id,
-- $17 audit changes. The run row is the durable start command; its first event and its audit
-- entry are written by the same statement (one round trip, one transaction; the statement is
-- migrations/0009's stepwell_insert_run, shared with start_run_rounds). Returns no row when the
-- workflow is no longer published (the caller read it before), or when the parent's step
-- attempt already has its child run.
SELECT * FROM stepwell_insert_run($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                                  $15, $16, $17);

-- name: get_child_run
-- $1 parent_run_id, $2 parent_step_id, $3 parent_attempt
SELECT * FROM runs_now
WHERE parent_run_id = $1 AND parent_step_id = $2 AND parent_attempt = $3;

-- name: get_run
-- $1 id, $2 owner_id (NULL: any owner)
SELECT * FROM runs_now WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2);

-- name: get_run_detail
-- $1 id, $2 owner_id (NULL: any owner). The run with its steps (id, status, output, in the order
-- of list_run_steps) as a JSON array: one statement, so both describe the same moment. The
-- rounds procedure returns an ended run the same way (migrations/0010).
SELECT r.*, stepwell_run_steps(r.id) AS steps
FROM runs_now r
WHERE r.id = $1 AND ($2::text IS NULL OR r.owner_id = $2);

-- name: get_run_for_actor
-- $1 id
SELECT r.*, w.definition FROM runs_now r JOIN workflows w ON w.id = r.workflow_id WHERE r.id = $1;

-- name: list_runs
-- $1 owner_id (NULL: all), $2 workflow_id, $3 status, $4 trigger_type, $5 created since,
-- $6 created before, $7 limit, $8 offset
SELECT id, shard, workflow_id, workflow_version, owner_id, status, trigger_type, input, output,
       error, parent_run_id, parent_step_id, scheduled_for, timeout_s, deadline_at, last_seq,
       created_by, created_at, started_at, completed_at, updated_at,
       count(*) OVER () AS total
FROM runs_now
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
-- transaction and one WAL flush. $1 node_id; $2 the changes as one JSON document. The
-- statement and its document are described in migrations/0007 (stepwell_persist_changes;
-- migrations/0010's stepwell_persist_run_changes checks `expect` against the run's events).
-- Returns (id, base_seq) for each run within its lease: base_seq is the seq before its first
-- new event, or NULL when the change did not apply; a run missing was fenced off.
SELECT id, base_seq FROM stepwell_persist_run_changes($1, $2);

-- name: run_rounds
-- $1 node_id, $2 one run's rounds as one document (see migrations/0011): committed one after
-- another, each in its own transaction (a procedure, one round trip). Returns `bases` (each
-- round's base seq; NULL: not applied, nor any after it), `fenced`, and `final` and
-- `final_steps` when the last round ended the run (stepwell_run_rounds).
CALL stepwell_run_rounds($1, $2);

-- name: start_run
-- $1 node_id, $2..$18 insert_run's $1..$17, $19 the run's first rounds as run_rounds takes
-- them. Inserts the run and commits the rounds, the first in the insert's transaction.
-- Returns `created` (the run row, or NULL when insert_run would return none; then no round
-- was tried) with run_rounds' `bases`, `fenced`, `final` and `final_steps`.
CALL stepwell_start_run($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                        $17, $18, $19);
