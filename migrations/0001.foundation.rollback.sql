-- Rollback of the foundation.
DROP TABLE audit_logs;
DROP TABLE idempotency_keys;
DROP TABLE workflows;
DROP TABLE api_keys;
