-- The node that runs a batch prediction job: when that node is gone (its heartbeat in `nodes`
-- is stale), another process ends the job failed, saying it was interrupted. Before, a process
-- killed during a job left it queued or running for good.
-- depends: 0012.profile_claims

ALTER TABLE batch_prediction_jobs ADD COLUMN node_id text;
