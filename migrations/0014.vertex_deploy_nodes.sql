-- The node carrying a Vertex AI deployment on: when that node is gone, another process ends
-- the deployment failed, saying it was interrupted (deploying again reuses what Vertex has).
-- Before, a process killed during a deploy left it `deploying` for good.
-- stepwell_node_gone says when a node is gone, for every kind of work a node claims and can
-- leave behind (profiles, batch jobs, Vertex deploys): not heard from, through the heartbeat
-- the shard leases keep in `nodes`, for `ttl_s` seconds.
-- depends: 0013.batch_job_nodes

CREATE FUNCTION stepwell_node_gone(node text, ttl_s double precision) RETURNS boolean
LANGUAGE sql STABLE AS $fn$
    SELECT NOT EXISTS (SELECT FROM nodes n
                       WHERE n.node_id = node
                         AND n.heartbeat_at > now() - make_interval(secs => ttl_s))
$fn$;

ALTER TABLE deployments ADD COLUMN node_id text;
