-- Back to 0007's procedure, which calls the group commit function for each round.
DROP PROCEDURE stepwell_commit_rounds(text, jsonb, jsonb, runs, jsonb);
DROP FUNCTION stepwell_run_steps(uuid);
CREATE PROCEDURE stepwell_commit_rounds(node text, rounds jsonb, INOUT results jsonb DEFAULT NULL)
LANGUAGE plpgsql AS $pr$
DECLARE
    round jsonb;
    written record;
BEGIN
    results := '[]'::jsonb;
    FOR round IN SELECT value FROM jsonb_array_elements(rounds) LOOP
        SELECT * INTO written FROM stepwell_persist_changes(node, round);
        IF NOT FOUND THEN
            results := results || jsonb_build_array(jsonb_build_object('fenced', true));
            EXIT;
        END IF;
        COMMIT;
        results := results || jsonb_build_array(jsonb_build_object('base_seq', written.base_seq));
        EXIT WHEN written.base_seq IS NULL;
    END LOOP;
END
$pr$;
