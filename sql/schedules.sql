-- name: insert_schedule
-- $1 id, $2 shard, $3 owner_id, $4 workflow_id, $5 name, $6 cron, $7 timezone, $8 input,
-- $9 enabled, $10 overlap_policy, $11 catchup_window_s, $12 start_at, $13 end_at,
-- $14 next_fire_at, $15 created_by
INSERT INTO schedules (id, shard, owner_id, workflow_id, name, cron, timezone, input, enabled,
                       overlap_policy, catchup_window_s, start_at, end_at, next_fire_at,
                       created_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
RETURNING *;

-- name: get_schedule
-- $1 id, $2 owner_id (NULL: any owner)
SELECT * FROM schedules WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2);

-- name: lock_schedule
-- $1 id, $2 owner_id (NULL: any owner)
SELECT * FROM schedules WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2) FOR UPDATE;

-- name: list_schedules
-- $1 owner_id (NULL: all), $2 workflow_id, $3 enabled, $4 limit, $5 offset
SELECT *, count(*) OVER () AS total
FROM schedules
WHERE ($1::text IS NULL OR owner_id = $1)
  AND ($2::uuid IS NULL OR workflow_id = $2)
  AND ($3::boolean IS NULL OR enabled = $3)
ORDER BY created_at DESC, id
LIMIT $4 OFFSET $5;

-- name: update_schedule
-- $1 id, $2 workflow_id, $3 name, $4 cron, $5 timezone, $6 input, $7 enabled,
-- $8 overlap_policy, $9 catchup_window_s, $10 start_at, $11 end_at, $12 next_fire_at,
-- $13 disabled_reason
UPDATE schedules
SET workflow_id = $2, name = $3, cron = $4, timezone = $5, input = $6, enabled = $7,
    overlap_policy = $8, catchup_window_s = $9, start_at = $10, end_at = $11,
    next_fire_at = $12, disabled_reason = $13, buffered_fire_at = NULL, updated_at = now()
WHERE id = $1
RETURNING *;

-- name: delete_schedule
-- $1 id
DELETE FROM schedules WHERE id = $1;

-- name: list_schedule_fires
-- $1 schedule_id, $2 limit, $3 offset
SELECT fire_time, outcome, run_id, reason, lateness_ms, node_id, fired_at,
       count(*) OVER () AS total
FROM schedule_fires WHERE schedule_id = $1
ORDER BY fire_time DESC
LIMIT $2 OFFSET $3;

-- name: due_schedules
-- $1 shards, $2 now, $3 limit; schedules with a fire due, or a buffered fire waiting
SELECT id FROM schedules
WHERE enabled AND shard = ANY($1::int[])
  AND (next_fire_at <= $2 OR buffered_fire_at IS NOT NULL)
ORDER BY next_fire_at
LIMIT $3;

-- name: next_due_time
-- $1 shards; the earliest fire any owned schedule waits for
SELECT min(next_fire_at) FROM schedules WHERE enabled AND shard = ANY($1::int[]);

-- name: lock_due_schedule
-- $1 id; another process firing it right now keeps it
SELECT * FROM schedules WHERE id = $1 AND enabled FOR UPDATE SKIP LOCKED;

-- name: claim_fire
-- $1 schedule_id, $2 fire_time, $3 outcome, $4 reason, $5 lateness_ms, $6 node_id
-- The primary key makes each fire time happen once, whoever tries.
INSERT INTO schedule_fires (schedule_id, fire_time, outcome, reason, lateness_ms, node_id)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT DO NOTHING
RETURNING fire_time;

-- name: set_fire_outcome
-- $1 schedule_id, $2 fire_time, $3 outcome, $4 run_id, $5 reason
UPDATE schedule_fires SET outcome = $3, run_id = $4, reason = $5
WHERE schedule_id = $1 AND fire_time = $2;

-- name: advance_schedule
-- $1 id, $2 next_fire_at, $3 last_fire_at, $4 buffered_fire_at
UPDATE schedules
SET next_fire_at = $2, last_fire_at = coalesce($3, last_fire_at), buffered_fire_at = $4
WHERE id = $1;

-- name: disable_schedule
-- $1 id, $2 reason
UPDATE schedules SET enabled = false, disabled_reason = $2, updated_at = now() WHERE id = $1;

-- name: active_schedule_runs
-- $1 schedule_id
SELECT id FROM runs
WHERE schedule_id = $1 AND status IN ('pending', 'running', 'paused')
ORDER BY created_at;
