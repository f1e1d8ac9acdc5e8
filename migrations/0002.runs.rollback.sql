DROP TABLE shard_leases;
DROP TABLE nodes;
DROP TABLE run_commands;
DROP TABLE run_events;
DROP TABLE step_attempts;
DROP TABLE run_steps;
DROP TABLE runs;
