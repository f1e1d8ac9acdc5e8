-- The node that claimed a version's profile: when that node is gone (its heartbeat in `nodes`
-- is stale), another process puts the profile back to pending and computes it. Before, a
-- process killed while profiling left its version `running` for good.
-- depends: 0011.lean_rounds_document

ALTER TABLE dataset_versions ADD COLUMN profile_node text;
