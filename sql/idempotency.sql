-- name: claim_idempotency_key
-- $1 owner_id, $2 key, $3 request_hash
-- Returns a row when the key is ours: new, expired (24 h), or abandoned in flight (5 min).
INSERT INTO idempotency_keys (owner_id, key, request_hash)
VALUES ($1, $2, $3)
ON CONFLICT (owner_id, key) DO UPDATE
    SET request_hash = EXCLUDED.request_hash, state = 'in_flight', response_status = NULL,
        response_body = NULL, content_type = NULL, created_at = now()
    WHERE idempotency_keys.created_at < now() - interval '24 hours'
       OR (idempotency_keys.state = 'in_flight'
           AND idempotency_keys.created_at < now() - interval '5 minutes')
RETURNING key;

-- name: get_idempotency_key
-- $1 owner_id, $2 key
SELECT request_hash, state, response_status, response_body, content_type
FROM idempotency_keys WHERE owner_id = $1 AND key = $2;

-- name: complete_idempotency_key
-- $1 owner_id, $2 key, $3 response_status, $4 response_body, $5 content_type
UPDATE idempotency_keys
SET state = 'done', response_status = $3, response_body = $4, content_type = $5
WHERE owner_id = $1 AND key = $2;

-- name: release_idempotency_key
-- $1 owner_id, $2 key
DELETE FROM idempotency_keys WHERE owner_id = $1 AND key = $2 AND state = 'in_flight';

-- name: delete_expired_idempotency_keys
DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours';
