ALTER TABLE dataset_versions DROP COLUMN profile_node;
