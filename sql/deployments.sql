-- Deployments: a model version served at an endpoint. Rows are shown with the version number,
-- so a client sees which version an alias pointed at when it was deployed.

-- name: insert_deployment
-- $1 owner_id, $2 model_id, $3 model_version_id, $4 alias, $5 target, $6 status, $7 endpoint,
-- $8 config, $9 created_by
INSERT INTO deployments (owner_id, model_id, model_version_id, alias, target, status, endpoint,
                         config, created_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
RETURNING id;

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
