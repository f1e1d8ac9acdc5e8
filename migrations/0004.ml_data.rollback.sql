DROP TABLE model_aliases;
DROP TABLE model_versions;
DROP TABLE models;
DROP TABLE dataset_versions;
DROP TABLE dataset_files;
DROP TABLE dataset_uploads;
DROP TABLE datasets;
