-- name: heartbeat_node
-- $1 node_id
INSERT INTO nodes (node_id) VALUES ($1)
ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = now();

-- name: count_live_nodes
-- $1 seconds a heartbeat stays fresh
SELECT count(*) FROM nodes WHERE heartbeat_at > now() - make_interval(secs => $1);

-- name: remove_node
-- $1 node_id
DELETE FROM nodes WHERE node_id = $1;

-- name: renew_shards
-- $1 node_id, $2 shards, $3 tokens (parallel to $2), $4 ttl seconds
UPDATE shard_leases AS l
SET expires_at = now() + make_interval(secs => $4)
FROM unnest($2::int[], $3::bigint[]) AS mine(shard, token)
WHERE l.shard = mine.shard AND l.owner = $1 AND l.token = mine.token AND l.expires_at > now()
RETURNING l.shard;

-- name: acquire_shards
-- $1 node_id, $2 how many, $3 ttl seconds, $4 shards this node holds now (left alone)
-- Takes free or expired shards, and shards this node id held before a restart; each take
-- bumps the fencing token so writes under an older lease fail.
WITH free AS (
    SELECT shard FROM shard_leases
    WHERE (expires_at <= now() OR owner IS NULL OR owner = $1) AND NOT shard = ANY($4::int[])
    ORDER BY (owner = $1) DESC NULLS LAST, shard
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE shard_leases AS l
SET owner = $1, token = l.token + 1, expires_at = now() + make_interval(secs => $3)
FROM free
WHERE l.shard = free.shard
RETURNING l.shard, l.token;

-- name: release_shards
-- $1 node_id, $2 shards
UPDATE shard_leases SET owner = NULL, expires_at = '-infinity'
WHERE owner = $1 AND shard = ANY($2::int[]);
