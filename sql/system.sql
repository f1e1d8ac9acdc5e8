-- name: ping
SELECT 1;

-- name: notify
-- $1 channel, $2 payload
SELECT pg_notify($1, $2);
