-- name: list_run_events
-- $1 run_id, $2 after seq, $3 limit
SELECT seq, event, step_id, data, at FROM run_events
WHERE run_id = $1 AND seq > $2
ORDER BY seq
LIMIT $3;

-- name: run_snapshot
-- $1 run_id; read in one statement so the step statuses and the seq describe the same moment
SELECT r.*,
       coalesce((SELECT jsonb_object_agg(step_id, status) FROM run_steps WHERE run_id = r.id),
                '{}') AS step_statuses
FROM runs_now r WHERE r.id = $1;
