-- Deployments: a model version served at an endpoint. Rows are shown with the version number,
-- so a client sees which version an alias pointed at when it was deployed.

-- name: insert_deployment
-- $1 owner_id, $2 model_id, $3 model_version_id, $4 alias, $5 target, $6 status, $7 endpoint,
-- $8 config, $9 created_by, $10 node_id (the node carrying a deploy on; NULL: none)
INSERT INTO deployments (owner_id, model_id, model_version_id, alias, target, status, endpoint,
                         config, created_by, node_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
RETURNING id;

-- name: fail_abandoned_deployments
-- $1 this node's id when it is starting (its deploys died with the process before it) or
-- NULL, $2 seconds a node's heartbeat stays fresh, $3 the error to record. Deployments still
-- deploying on a node that is gone end failed; returns their ids. Those of a release that did
-- not record their node are left alone (their process may still be carrying them on).
UPDATE deployments d SET status = 'failed', error = $3, updated_at = now()
WHERE d.status = 'deploying' AND d.node_id IS NOT NULL
  AND (d.node_id = $1 OR stepwell_node_gone(d.node_id, $2))
RETURNING d.id;

-- name: get_deployment
-- $1 id
SELECT d.*, v.version
FROM deployments d JOIN model_versions v ON v.id = d.model_version_id
WHERE d.id = $1;

-- name: list_model_deployments
-- $1 model_id, $2 limit, $3 offset
SELECT d.*, v.version, count(*) OVER () AS total
FROM deployments d JOIN model_versions v ON v.id = d.model_version_id
WHERE d.model_id = $1
ORDER BY d.created_at DESC, d.id
LIMIT $2 OFFSET $3;

-- name: finish_deployment
-- $1 id, $2 status, $3 endpoint (NULL: keep), $4 config keys to add, $5 error
-- Only a deployment still deploying ends, and only once.
UPDATE deployments
SET status = $2, endpoint = coalesce($3, endpoint), config = config || $4::jsonb, error = $5,
    updated_at = now()
WHERE id = $1 AND status = 'deploying'
RETURNING id;
