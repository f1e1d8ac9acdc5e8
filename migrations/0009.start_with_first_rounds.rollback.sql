DROP PROCEDURE stepwell_start_rounds(
    text, uuid, integer, uuid, integer, text, text, jsonb, double precision, timestamptz, uuid,
    text, integer, text, uuid, text, text, jsonb, jsonb, runs, jsonb, runs, jsonb
);
DROP FUNCTION stepwell_insert_run(
    uuid, integer, uuid, integer, text, text, jsonb, double precision, timestamptz, uuid, text,
    integer, text, uuid, text, text, jsonb
);
