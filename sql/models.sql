-- The model registry: models, their numbered versions, aliases and lineage to dataset versions.
-- Version rows are shown with their aliases and, through the dataset version, the dataset id and
-- version number, so a client can follow lineage either way with ids it already has.

-- name: insert_model
-- $1 owner_id, $2 name, $3 description, $4 model_type, $5 framework, $6 created_by
INSERT INTO models (owner_id, name, description, model_type, framework, created_by)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING id;

-- name: get_model
-- $1 id, $2 owner_id (NULL: any owner)
SELECT m.*,
       (SELECT max(v.version) FROM model_versions v WHERE v.model_id = m.id) AS latest_version,
       (SELECT coalesce(jsonb_object_agg(a.alias, v.version), '{}')
          FROM model_aliases a JOIN model_versions v ON v.id = a.version_id
         WHERE a.model_id = m.id) AS aliases
FROM models m
WHERE m.id = $1 AND ($2::text IS NULL OR m.owner_id = $2);

-- name: lock_model
-- $1 id, $2 owner_id (NULL: any owner)
SELECT * FROM models WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2) FOR UPDATE;

-- name: lock_model_shared
-- $1 id, $2 owner_id (NULL: any owner); versions may be added side by side, an archive waits
SELECT * FROM models WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2) FOR SHARE;

-- name: list_models
-- $1 owner_id (NULL: all), $2 status (NULL: all), $3 name (case-insensitive substring),
-- $4 model_type, $5 framework, $6 limit, $7 offset
SELECT m.*, count(*) OVER () AS total,
       (SELECT max(v.version) FROM model_versions v WHERE v.model_id = m.id) AS latest_version,
       (SELECT coalesce(jsonb_object_agg(a.alias, v.version), '{}')
          FROM model_aliases a JOIN model_versions v ON v.id = a.version_id
         WHERE a.model_id = m.id) AS aliases
FROM models m
WHERE ($1::text IS NULL OR m.owner_id = $1)
  AND ($2::text IS NULL OR m.status = $2)
  AND ($3::text IS NULL OR strpos(lower(m.name), lower($3)) > 0)
  AND ($4::text IS NULL OR m.model_type = $4)
  AND ($5::text IS NULL OR m.framework = $5)
ORDER BY m.created_at DESC, m.id
LIMIT $6 OFFSET $7;

-- name: archive_model
-- $1 id
UPDATE models SET status = 'archived', archived_at = now(), updated_at = now() WHERE id = $1;

-- name: lock_model_versions
-- $1 model_id; serialises version numbering (and alias moves made with a new version)
SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0));

-- name: next_model_version
-- $1 model_id
SELECT coalesce(max(version), 0) + 1 FROM model_versions WHERE model_id = $1;

-- name: insert_model_version
-- $1 model_id, $2 version, $3 artifact_uri, $4 framework, $5 description, $6 metrics,
-- $7 parameters, $8 metadata, $9 dataset_version_id, $10 training_job_id, $11 created_by
INSERT INTO model_versions (model_id, version, artifact_uri, framework, description, metrics,
                            parameters, metadata, dataset_version_id, training_job_id, created_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
RETURNING *;

-- name: get_model_version
-- $1 model_id, $2 version number (NULL: resolve $3), $3 alias name (NULL: use $2)
SELECT v.*, dv.dataset_id, dv.version AS dataset_version,
       array(SELECT a.alias FROM model_aliases a WHERE a.version_id = v.id ORDER BY a.alias)
         AS aliases
FROM model_versions v
LEFT JOIN dataset_versions dv ON dv.id = v.dataset_version_id
WHERE v.model_id = $1
  AND (v.version = $2::int
       OR v.id = (SELECT a.version_id FROM model_aliases a
                   WHERE a.model_id = $1 AND a.alias = $3::text));

-- name: list_model_versions
-- $1 model_id, $2 limit, $3 offset
SELECT v.*, dv.dataset_id, dv.version AS dataset_version, count(*) OVER () AS total,
       array(SELECT a.alias FROM model_aliases a WHERE a.version_id = v.id ORDER BY a.alias)
         AS aliases
FROM model_versions v
LEFT JOIN dataset_versions dv ON dv.id = v.dataset_version_id
WHERE v.model_id = $1
ORDER BY v.version DESC
LIMIT $2 OFFSET $3;

-- name: update_model_version
-- $1 id, $2 description, $3 metadata, $4 metrics
UPDATE model_versions
SET description = $2, metadata = $3, metrics = $4, updated_at = now()
WHERE id = $1;

-- name: list_model_aliases
-- $1 model_id; each alias with the version it points at
SELECT a.alias, a.version_id, v.version
FROM model_aliases a JOIN model_versions v ON v.id = a.version_id
WHERE a.model_id = $1
ORDER BY a.alias;

-- name: upsert_model_alias
-- $1 model_id, $2 alias, $3 version_id, $4 updated_by
INSERT INTO model_aliases (model_id, alias, version_id, updated_by)
VALUES ($1, $2, $3, $4)
ON CONFLICT (model_id, alias)
DO UPDATE SET version_id = $3, updated_by = $4, updated_at = now();

-- name: delete_model_alias
-- $1 model_id, $2 alias
DELETE FROM model_aliases WHERE model_id = $1 AND alias = $2;

-- name: find_visible_dataset_version
-- $1 dataset_version_id, $2 owner_id (NULL: any owner); deleted datasets count as gone
SELECT dv.id
FROM dataset_versions dv JOIN datasets d ON d.id = dv.dataset_id
WHERE dv.id = $1 AND d.status <> 'deleted' AND ($2::text IS NULL OR d.owner_id = $2);

-- name: find_dataset_version_by_number
-- $1 dataset_id, $2 version number, $3 owner_id (NULL: any owner)
SELECT dv.id
FROM dataset_versions dv JOIN datasets d ON d.id = dv.dataset_id
WHERE dv.dataset_id = $1 AND dv.version = $2 AND d.status <> 'deleted'
  AND ($3::text IS NULL OR d.owner_id = $3);

-- name: list_dataset_version_models
-- $1 dataset_version_id, $2 owner_id of the models (NULL: all), $3 limit, $4 offset
SELECT v.*, m.name AS model_name, dv.dataset_id, dv.version AS dataset_version,
       count(*) OVER () AS total,
       array(SELECT a.alias FROM model_aliases a WHERE a.version_id = v.id ORDER BY a.alias)
         AS aliases
FROM model_versions v
JOIN models m ON m.id = v.model_id
JOIN dataset_versions dv ON dv.id = v.dataset_version_id
WHERE v.dataset_version_id = $1 AND ($2::text IS NULL OR m.owner_id = $2)
ORDER BY v.created_at DESC, v.id
LIMIT $3 OFFSET $4;
