ALTER TABLE batch_prediction_jobs DROP COLUMN node_id;
