DROP TABLE batch_prediction_jobs;
DROP TABLE predictions;
DROP TABLE deployments;
DROP TABLE training_job_metrics;
DROP TABLE training_job_logs;
DROP TABLE training_jobs;
