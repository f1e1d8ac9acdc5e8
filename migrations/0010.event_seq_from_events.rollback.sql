DROP PROCEDURE stepwell_start_run_rounds(
    text, uuid, integer, uuid, integer, text, text, jsonb, double precision, timestamptz, uuid,
    text, integer, text, uuid, text, text, jsonb, jsonb, runs, jsonb, runs, jsonb
);
DROP PROCEDURE stepwell_commit_run_rounds(text, jsonb, jsonb, runs, jsonb);
DROP FUNCTION stepwell_persist_run_changes(text, jsonb);
DROP VIEW runs_now;
