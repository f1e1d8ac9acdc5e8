DROP PROCEDURE stepwell_start_run(
    text, uuid, integer, uuid, integer, text, text, jsonb, double precision, timestamptz, uuid,
    text, integer, text, uuid, text, text, jsonb, jsonb, runs, bigint[], boolean, runs, jsonb
);
DROP PROCEDURE stepwell_run_rounds(text, jsonb, bigint[], boolean, runs, jsonb);
