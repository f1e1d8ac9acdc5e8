-- name: insert_workflow
-- $1 family_id (NULL: a new family, the workflow's own id), $2 owner_id, $3 name,
-- $4 description, $5 workflow_type, $6 definition, $7 input_schema, $8 version, $9 created_by
WITH new_id AS (SELECT gen_random_uuid() AS id)
INSERT INTO workflows (id, family_id, owner_id, name, description, workflow_type, definition,
                       input_schema, version, created_by)
SELECT new_id.id, coalesce($1, new_id.id), $2, $3, $4, $5, $6, $7, $8, $9 FROM new_id
RETURNING *;

-- name: get_workflow
-- $1 id, $2 owner_id (NULL: any owner)
SELECT * FROM workflows WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2);

-- name: lock_workflow
-- $1 id, $2 owner_id (NULL: any owner)
SELECT * FROM workflows WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2) FOR UPDATE;

-- name: list_workflows
-- $1 owner_id (NULL: all), $2 status, $3 name (case-insensitive substring), $4 workflow_type,
-- $5 limit, $6 offset
SELECT *, count(*) OVER () AS total
FROM workflows
WHERE ($1::text IS NULL OR owner_id = $1)
  AND ($2::text IS NULL OR status = $2)
  AND ($3::text IS NULL OR strpos(lower(name), lower($3)) > 0)
  AND ($4::text IS NULL OR workflow_type = $4)
ORDER BY created_at DESC, id
LIMIT $5 OFFSET $6;

-- name: update_workflow
-- $1 id, $2 name, $3 description, $4 workflow_type, $5 definition, $6 input_schema
UPDATE workflows
SET name = $2, description = $3, workflow_type = $4, definition = $5, input_schema = $6,
    updated_at = now()
WHERE id = $1
RETURNING *;

-- name: set_workflow_status
-- $1 id, $2 status
UPDATE workflows
SET status = $2, updated_at = now(),
    published_at = CASE WHEN $2 = 'published' THEN now() ELSE published_at END,
    archived_at = CASE WHEN $2 = 'archived' THEN now() ELSE archived_at END
WHERE id = $1
RETURNING *;

-- name: delete_workflow
-- $1 id
DELETE FROM workflows WHERE id = $1;

-- name: lock_workflow_family
-- $1 family_id; serialises version numbering inside one family
SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0));

-- name: next_family_version
-- $1 family_id
SELECT coalesce(max(version), 0) + 1 FROM workflows WHERE family_id = $1;

-- name: list_workflow_versions
-- $1 family_id, $2 owner_id (NULL: all), $3 limit, $4 offset
SELECT *, count(*) OVER () AS total
FROM workflows
WHERE family_id = $1 AND ($2::text IS NULL OR owner_id = $2)
ORDER BY version DESC
LIMIT $3 OFFSET $4;
