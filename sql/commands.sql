-- name: insert_command
-- $1 run_id, $2 kind, $3 payload, $4 created_by
INSERT INTO run_commands (run_id, kind, payload, created_by)
VALUES ($1, $2, $3, $4)
RETURNING id, run_id, kind, payload, created_at;

-- name: list_pending_commands
-- $1 run_id
SELECT id, kind, payload, created_by FROM run_commands
WHERE run_id = $1 AND processed_at IS NULL
ORDER BY id;

-- name: run_shard
-- $1 run_id
SELECT shard FROM runs WHERE id = $1;

-- name: insert_child_done
-- $1 parent_run_id, $2 payload; the child's result, delivered to its parent as a command
INSERT INTO run_commands (run_id, kind, payload, created_by)
VALUES ($1, 'child_done', $2, 'system')
RETURNING id;
