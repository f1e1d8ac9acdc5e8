-- Online predictions (one row per request) and batch prediction jobs.

-- name: get_servable_model_version
-- $1 model_version_id, $2 owner_id of the model (NULL: any owner). `trained_by_job_id` is the
-- succeeded training job that registered this version, NULL for versions registered by hand
-- (their training_job_id is whatever the caller said; the job's model_version_id is not): only
-- the file that job stored is ever loaded.
SELECT v.id, v.model_id, v.version, v.artifact_uri, v.metadata, m.owner_id, m.model_type,
       m.status AS model_status,
       (SELECT j.id FROM training_jobs j
         WHERE j.id = v.training_job_id AND j.model_version_id = v.id
           AND j.status = 'succeeded') AS trained_by_job_id
FROM model_versions v JOIN models m ON m.id = v.model_id
WHERE v.id = $1 AND ($2::text IS NULL OR m.owner_id = $2);

-- name: insert_prediction
-- $1 owner_id, $2 model_version_id, $3 input_data, $4 predictions, $5 probabilities,
-- $6 latency_ms, $7 created_by
INSERT INTO predictions (owner_id, model_version_id, input_data, predictions, probabilities,
                         latency_ms, created_by)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING *;

-- name: get_prediction
-- $1 id, $2 owner_id (NULL: any owner)
SELECT * FROM predictions WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2);

-- name: list_predictions
-- $1 owner_id (NULL: all), $2 model_version_id (NULL: all), $3 limit, $4 offset
SELECT p.*, count(*) OVER () AS total
FROM predictions p
WHERE ($1::text IS NULL OR p.owner_id = $1)
  AND ($2::uuid IS NULL OR p.model_version_id = $2)
ORDER BY p.created_at DESC, p.id
LIMIT $3 OFFSET $4;

-- name: insert_batch_prediction_job
-- $1 owner_id, $2 model_version_id, $3 input_uri, $4 output_uri, $5 created_by, $6 node_id
-- (the node that runs it)
INSERT INTO batch_prediction_jobs (owner_id, model_version_id, input_uri, output_uri, created_by,
                                   node_id)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING *;

-- name: fail_abandoned_batch_jobs
-- $1 this node's id when it is starting (its jobs died with the process before it) or NULL,
-- $2 seconds a node's heartbeat stays fresh. Jobs queued or running on a node that is gone
-- end failed, saying so; returns their ids. Jobs of a release that did not record their node
-- are left alone (their process may still be running them).
UPDATE batch_prediction_jobs j
SET status = 'failed', completed_at = now(),
    error = 'interrupted: the process running it stopped; the output was not stored'
WHERE j.status IN ('queued', 'running') AND j.node_id IS NOT NULL
  AND (j.node_id = $1 OR stepwell_node_gone(j.node_id, $2))
RETURNING j.id;

-- name: get_batch_prediction_job
-- $1 id, $2 owner_id (NULL: any owner)
SELECT * FROM batch_prediction_jobs WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2);

-- name: start_batch_prediction_job
-- $1 id
UPDATE batch_prediction_jobs SET status = 'running' WHERE id = $1 AND status = 'queued';

-- name: update_batch_prediction_progress
-- $1 id, $2 rows_total, $3 rows_failed, $4 failed_rows (the first ones, as JSON)
UPDATE batch_prediction_jobs
SET rows_total = $2, rows_failed = $3, failed_rows = $4
WHERE id = $1;

-- name: finish_batch_prediction_job
-- $1 id, $2 status (succeeded or failed), $3 rows_total, $4 rows_failed, $5 failed_rows,
-- $6 error
UPDATE batch_prediction_jobs
SET status = $2, rows_total = $3, rows_failed = $4, failed_rows = $5, error = $6,
    completed_at = now()
WHERE id = $1
RETURNING *;

-- name: find_dataset_for_batch_input
-- $1 dataset_id, $2 owner_id (NULL: any owner); deleted datasets are not found
SELECT true FROM datasets
WHERE id = $1 AND status = 'active' AND ($2::text IS NULL OR owner_id = $2);
