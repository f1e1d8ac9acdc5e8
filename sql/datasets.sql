-- Datasets, their uploads and files, immutable versions and version profiles.

-- name: insert_dataset
-- $1 owner_id, $2 name, $3 description, $4 dataset_type, $5 created_by
INSERT INTO datasets (owner_id, name, description, dataset_type, created_by)
VALUES ($1, $2, $3, $4, $5)
RETURNING *;

-- name: get_dataset
-- $1 id, $2 owner_id (NULL: any owner); deleted datasets are not found
SELECT * FROM datasets
WHERE id = $1 AND status = 'active' AND ($2::text IS NULL OR owner_id = $2);

-- name: lock_dataset
-- $1 id, $2 owner_id (NULL: any owner); deleted datasets are not found
SELECT * FROM datasets
WHERE id = $1 AND status = 'active' AND ($2::text IS NULL OR owner_id = $2)
FOR UPDATE;

-- name: list_datasets
-- $1 owner_id (NULL: all), $2 name (case-insensitive substring), $3 dataset_type,
-- $4 limit, $5 offset
SELECT *, count(*) OVER () AS total
FROM datasets
WHERE status = 'active'
  AND ($1::text IS NULL OR owner_id = $1)
  AND ($2::text IS NULL OR strpos(lower(name), lower($2)) > 0)
  AND ($3::text IS NULL OR dataset_type = $3)
ORDER BY created_at DESC, id
LIMIT $4 OFFSET $5;

-- name: soft_delete_dataset
-- $1 id
UPDATE datasets
SET status = 'deleted', deleted_at = now(), updated_at = now()
WHERE id = $1
RETURNING *;

-- name: insert_dataset_upload
-- $1 id, $2 dataset_id, $3 method, $4 created_by, $5 seconds until it expires
INSERT INTO dataset_uploads (id, dataset_id, method, created_by, expires_at)
VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
RETURNING *;

-- name: insert_dataset_file
-- $1 upload_id, $2 name, $3 storage_key, $4 content_type, $5 size_bytes (NULL: not yet
-- uploaded), $6 sha256
INSERT INTO dataset_files (upload_id, name, storage_key, content_type, size_bytes, sha256)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING *;

-- name: get_dataset_upload
-- $1 upload_id, $2 dataset_id; with `expired` judged by the database clock
SELECT *, expires_at < now() AS expired
FROM dataset_uploads WHERE id = $1 AND dataset_id = $2;

-- name: lock_dataset_upload
-- $1 upload_id, $2 dataset_id
SELECT * FROM dataset_uploads WHERE id = $1 AND dataset_id = $2 FOR UPDATE;

-- name: list_upload_files
-- $1 upload_id
SELECT * FROM dataset_files WHERE upload_id = $1 ORDER BY name;

-- name: complete_dataset_file
-- $1 upload_id, $2 name, $3 size_bytes, $4 sha256
UPDATE dataset_files SET size_bytes = $3, sha256 = $4 WHERE upload_id = $1 AND name = $2;

-- name: mark_upload_used
-- $1 upload_id
UPDATE dataset_uploads SET status = 'used' WHERE id = $1;

-- name: lock_dataset_versions
-- $1 dataset_id; serialises version numbering inside one dataset
SELECT pg_advisory_xact_lock(hashtextextended('dataset_versions:' || $1::text, 0));

-- name: next_dataset_version
-- $1 dataset_id
SELECT coalesce(max(version), 0) + 1 FROM dataset_versions WHERE dataset_id = $1;

-- name: insert_dataset_version
-- $1 dataset_id, $2 version, $3 description, $4 files, $5 total_digest, $6 size_bytes,
-- $7 created_by
INSERT INTO dataset_versions (dataset_id, version, description, files, total_digest,
                              size_bytes, created_by)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING id, dataset_id, version, description, files, total_digest, size_bytes, row_count,
          profile_status, profile_error, created_by, created_at;

-- name: list_dataset_versions
-- $1 dataset_id, $2 limit, $3 offset; newest first, without the (large) profile
SELECT id, dataset_id, version, description, files, total_digest, size_bytes, row_count,
       profile_status, profile_error, created_by, created_at, count(*) OVER () AS total
FROM dataset_versions
WHERE dataset_id = $1
ORDER BY version DESC
LIMIT $2 OFFSET $3;

-- name: get_dataset_version
-- $1 dataset_id, $2 version number; without the profile
SELECT id, dataset_id, version, description, files, total_digest, size_bytes, row_count,
       profile_status, profile_error, created_by, created_at
FROM dataset_versions WHERE dataset_id = $1 AND version = $2;

-- name: get_dataset_profile
-- $1 dataset_id, $2 version number
SELECT profile_status, profile, profile_error
FROM dataset_versions WHERE dataset_id = $1 AND version = $2;

-- name: claim_dataset_profile
-- $1 version id, $2 node id; only a pending profile is claimed, so two processes never both
-- run it
UPDATE dataset_versions v
SET profile_status = 'running', profile_error = NULL, profile_node = $2
FROM datasets d
WHERE v.id = $1 AND v.profile_status = 'pending' AND d.id = v.dataset_id
RETURNING v.id, v.files, d.dataset_type;

-- name: finish_dataset_profile
-- $1 version id, $2 profile_status ('succeeded' or 'failed'), $3 profile, $4 profile_error,
-- $5 row_count (NULL: unknown), $6 node id: written only under that node's claim
UPDATE dataset_versions
SET profile_status = $2, profile = $3, profile_error = $4, row_count = $5, profile_node = NULL
WHERE id = $1 AND profile_status = 'running' AND profile_node = $6;

-- name: release_dataset_profile
-- $1 version id, $2 node id; a profile interrupted by shutdown goes back to pending to be
-- picked up again
UPDATE dataset_versions SET profile_status = 'pending', profile_node = NULL
WHERE id = $1 AND profile_status = 'running' AND profile_node = $2;

-- name: reclaim_dataset_profiles
-- $1 this node's id when it is starting (its claims died with the process before it) or
-- NULL, $2 seconds a node's heartbeat stays fresh. Profiles claimed by a node that is gone
-- (or by no node: claimed by a release that did not record it) go back to pending; returns
-- their ids.
UPDATE dataset_versions v SET profile_status = 'pending', profile_node = NULL
WHERE v.profile_status = 'running'
  AND (v.profile_node IS NULL OR v.profile_node = $1
       OR stepwell_node_gone(v.profile_node, $2))
RETURNING v.id;

-- name: list_pending_dataset_profiles
-- $1 limit
SELECT id FROM dataset_versions WHERE profile_status = 'pending' ORDER BY created_at LIMIT $1;
