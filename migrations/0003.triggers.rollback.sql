DROP TABLE webhook_deliveries;
DROP TABLE webhook_secrets;
ALTER TABLE runs DROP COLUMN schedule_id;
DROP TABLE schedule_fires;
DROP TABLE schedules;
