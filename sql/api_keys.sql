-- name: insert_api_key
-- $1 owner_id, $2 role, $3 name, $4 prefix, $5 key_hash, $6 expires_at
INSERT INTO api_keys (owner_id, role, name, prefix, key_hash, expires_at)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING id, owner_id, name, prefix, expires_at, last_used_at, created_at;

-- name: get_api_key_by_hash
-- $1 key_hash
SELECT id, owner_id, role FROM api_keys
WHERE key_hash = $1 AND (expires_at IS NULL OR expires_at > now());

-- name: touch_api_key
-- $1 id; written at most once a minute so busy keys do not turn reads into writes
UPDATE api_keys SET last_used_at = now()
WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute');

-- name: list_api_keys
-- $1 owner_id (NULL: all owners), $2 limit, $3 offset
SELECT id, owner_id, name, prefix, expires_at, last_used_at, created_at,
       count(*) OVER () AS total
FROM api_keys
WHERE ($1::text IS NULL OR owner_id = $1)
ORDER BY created_at DESC, id
LIMIT $2 OFFSET $3;

-- name: delete_api_key
-- $1 id, $2 owner_id (NULL: any owner)
DELETE FROM api_keys
WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2)
RETURNING id, owner_id, name, prefix;
