-- Step rows, attempt results and events are written only by the fenced run-change statement,
-- which updates the run row in the same statement (so the run exists) and never deletes runs.
-- Their foreign-key checks cost about a quarter of the durable steps per second (a key-share
-- lock and an index probe on `runs` per row), so they go; the rule is kept by that statement.
-- depends: 0005.training

ALTER TABLE run_steps DROP CONSTRAINT run_steps_run_id_fkey;
ALTER TABLE step_attempts DROP CONSTRAINT step_attempts_run_id_fkey;
ALTER TABLE run_events DROP CONSTRAINT run_events_run_id_fkey;
