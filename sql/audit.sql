-- name: insert_audit_log
-- $1 user_id, $2 owner_id, $3 action, $4 entity_type, $5 entity_id, $6 changes, $7 request_id
INSERT INTO audit_logs (user_id, owner_id, action, entity_type, entity_id, changes, request_id)
VALUES ($1, $2, $3, $4, $5, $6, $7);

-- name: list_audit_logs
-- $1 owner_id (NULL: all), $2 entity_type, $3 entity_id, $4 user_id, $5 since, $6 until,
-- $7 limit, $8 offset
SELECT *, count(*) OVER () AS total
FROM audit_logs
WHERE ($1::text IS NULL OR owner_id = $1)
  AND ($2::text IS NULL OR entity_type = $2)
  AND ($3::text IS NULL OR entity_id = $3)
  AND ($4::text IS NULL OR user_id = $4)
  AND ($5::timestamptz IS NULL OR at >= $5)
  AND ($6::timestamptz IS NULL OR at < $6)
ORDER BY at DESC, id DESC
LIMIT $7 OFFSET $8;
