-- name: insert_training_job
-- $1 id, $2 shard, $3 owner_id, $4 experiment_id, $5 model_id, $6 dataset_id,
-- $7 dataset_version_id, $8 backend, $9 config, $10 run_id, $11 step_id, $12 created_by
INSERT INTO training_jobs (id, shard, owner_id, experiment_id, model_id, dataset_id,
                           dataset_version_id, backend, config, run_id, step_id, created_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT DO NOTHING
RETURNING *;

-- name: get_training_job
-- $1 id, $2 owner_id (NULL: any owner)
SELECT * FROM training_jobs WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2);

-- name: get_step_training_job
-- $1 run_id, $2 step key ("<step_id>#<attempt>")
SELECT * FROM training_jobs WHERE run_id = $1 AND step_id = $2;

-- name: list_training_jobs
-- $1 owner_id (NULL: all), $2 status, $3 model_id, $4 experiment_id, $5 limit, $6 offset
SELECT *, count(*) OVER () AS total
FROM training_jobs
WHERE ($1::text IS NULL OR owner_id = $1)
  AND ($2::text IS NULL OR status = $2)
  AND ($3::uuid IS NULL OR model_id = $3)
  AND ($4::text IS NULL OR experiment_id = $4)
ORDER BY created_at DESC, id
LIMIT $5 OFFSET $6;

-- name: training_job_inputs
-- $1 job id; what a job trains on: the model and the dataset version's files
SELECT j.*, m.model_type, m.framework, m.status AS model_status, v.files, v.version AS
       dataset_version
FROM training_jobs j
JOIN models m ON m.id = j.model_id
JOIN dataset_versions v ON v.id = j.dataset_version_id
WHERE j.id = $1;

-- name: set_training_status
-- $1 id, $2 status, $3 raw_state, $4 error, $5 shard, $6 node_id, $7 fencing token
-- Fenced like run changes: only the shard's owner moves a job.
UPDATE training_jobs SET
    status = $2, raw_state = coalesce($3, raw_state), error = coalesce($4, error),
    started_at = CASE WHEN $2 = 'running' THEN coalesce(started_at, now()) ELSE started_at END,
    completed_at = CASE WHEN $2 IN ('succeeded', 'failed', 'cancelled', 'timed_out') THEN now()
                        ELSE completed_at END,
    updated_at = now()
WHERE id = $1
  AND EXISTS (SELECT 1 FROM shard_leases
              WHERE shard = $5 AND owner = $6 AND token = $7 AND expires_at > now())
RETURNING *;

-- name: set_training_external_id
-- $1 id, $2 external_id
UPDATE training_jobs SET external_id = $2, updated_at = now() WHERE id = $1;

-- name: finish_training_job
-- $1 id, $2 metrics, $3 model_version_id, $4 shard, $5 node_id, $6 token
UPDATE training_jobs SET
    status = 'succeeded', metrics = $2, model_version_id = $3, completed_at = now(),
    updated_at = now()
WHERE id = $1
  AND EXISTS (SELECT 1 FROM shard_leases
              WHERE shard = $4 AND owner = $5 AND token = $6 AND expires_at > now())
RETURNING *;

-- name: request_training_cancel
-- $1 id, $2 owner_id (NULL: any owner); answers with the job whatever its state
UPDATE training_jobs SET
    cancel_requested = true,
    status = CASE WHEN status IN ('queued', 'pending', 'running') THEN 'cancelling'
                  ELSE status END,
    updated_at = now()
WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2)
RETURNING *;

-- name: append_training_log
-- $1 job id, $2 level, $3 message
WITH seq AS (
    UPDATE training_jobs SET last_log_seq = last_log_seq + 1 WHERE id = $1
    RETURNING last_log_seq
)
INSERT INTO training_job_logs (job_id, seq, level, message)
SELECT $1, last_log_seq, $2, $3 FROM seq
RETURNING seq;

-- name: list_training_logs
-- $1 job id, $2 after seq, $3 limit
SELECT seq, level, message, at FROM training_job_logs
WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3;

-- name: insert_training_metric
-- $1 job id, $2 step, $3 name, $4 value
INSERT INTO training_job_metrics (job_id, step, name, value) VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING;

-- name: list_training_metrics
-- $1 job id
SELECT name, step, value, at FROM training_job_metrics WHERE job_id = $1 ORDER BY name, step;

-- name: list_active_training_jobs
-- $1 shards
SELECT id FROM training_jobs
WHERE shard = ANY($1::int[]) AND status IN ('queued', 'pending', 'running', 'cancelling');

-- name: latest_dataset_version
-- $1 dataset_id, $2 version (NULL: the latest)
SELECT * FROM dataset_versions
WHERE dataset_id = $1 AND ($2::int IS NULL OR version = $2)
ORDER BY version DESC LIMIT 1;

-- name: get_dataset_for_training
-- $1 dataset_id, $2 owner_id (NULL: any owner)
SELECT * FROM datasets
WHERE id = $1 AND status = 'active' AND ($2::text IS NULL OR owner_id = $2);

-- name: get_model_for_training
-- $1 model_id, $2 owner_id (NULL: any owner)
SELECT * FROM models WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2);

-- name: lock_trained_model
-- $1 model_id; serialises version numbering with the registry's own version creation
SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0));

-- name: register_trained_version
-- $1 model_id, $2 artifact_uri, $3 framework, $4 metrics, $5 parameters, $6 metadata,
-- $7 dataset_version_id, $8 training_job_id, $9 created_by (after lock_trained_model)
INSERT INTO model_versions (model_id, version, artifact_uri, framework, metrics, parameters,
                            metadata, dataset_version_id, training_job_id, created_by)
SELECT $1, coalesce((SELECT max(version) FROM model_versions WHERE model_id = $1), 0) + 1,
       $2, $3, $4, $5, $6, $7, $8, $9
RETURNING *;

-- name: training_job_status
-- $1 id
SELECT status FROM training_jobs WHERE id = $1;
