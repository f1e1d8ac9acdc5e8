ALTER TABLE deployments DROP COLUMN node_id;
DROP FUNCTION stepwell_node_gone(text, double precision);
