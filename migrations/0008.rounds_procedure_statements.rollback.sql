DROP PROCEDURE stepwell_write_rounds(text, jsonb, jsonb, runs, jsonb);
DROP FUNCTION stepwell_run_steps(uuid);
