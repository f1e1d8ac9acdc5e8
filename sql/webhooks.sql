-- name: get_webhook_target
-- $1 workflow_id; the workflow's owner and its webhook secret (NULL when none is set)
SELECT w.id, w.owner_id, s.secret
FROM workflows w
LEFT JOIN webhook_secrets s ON s.workflow_id = w.id
WHERE w.id = $1;

-- name: upsert_webhook_secret
-- $1 workflow_id, $2 secret, $3 created_by; `replaced` says whether a secret existed before
WITH previous AS (SELECT 1 FROM webhook_secrets WHERE workflow_id = $1)
INSERT INTO webhook_secrets (workflow_id, secret, created_by)
VALUES ($1, $2, $3)
ON CONFLICT (workflow_id) DO UPDATE
SET secret = excluded.secret, created_by = excluded.created_by, created_at = now()
RETURNING workflow_id, created_at, EXISTS (SELECT 1 FROM previous) AS replaced;

-- name: delete_webhook_secret
-- $1 workflow_id
DELETE FROM webhook_secrets WHERE workflow_id = $1 RETURNING workflow_id;

-- name: get_webhook_delivery_run
-- $1 workflow_id, $2 delivery_id; the run the first copy of this delivery started
SELECT r.*
FROM webhook_deliveries d
JOIN runs_now r ON r.id = d.run_id
WHERE d.workflow_id = $1 AND d.delivery_id = $2;

-- name: insert_webhook_delivery
-- $1 workflow_id, $2 delivery_id, $3 run_id; no row back when another request recorded it first
INSERT INTO webhook_deliveries (workflow_id, delivery_id, run_id)
VALUES ($1, $2, $3)
ON CONFLICT (workflow_id, delivery_id) DO NOTHING
RETURNING run_id;

-- name: delete_expired_webhook_deliveries
-- Delivery ids are kept as long as idempotency keys: 24 hours.
DELETE FROM webhook_deliveries WHERE received_at < now() - interval '24 hours';
