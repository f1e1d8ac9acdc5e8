-- A run's rounds are committed by plain statements about that one run, not by the group
-- commit function: the function's joins, its table result and its record sets are built for
-- a batch of many runs, and for a round of one run they cost more than the writes do.
-- Measured on 10 rounds of the benchmark's no-op chain, in the database: 9.6 ms for the call
-- against 11.2 ms through the function (bare INSERT+COMMIT x 10: 5.3 ms).
-- When the last round ends the run, the call also returns the ended run with its steps, as
-- get_run_detail reads them: whoever waits for the run needs no read of its own.
-- depends: 0007.run_commit_procedure

-- A run's steps as the API shows them with the run (id, status, output), in the order of
-- list_run_steps. STABLE: called in a statement, it sees that statement's snapshot.
CREATE FUNCTION stepwell_run_steps(run uuid) RETURNS jsonb
LANGUAGE sql STABLE AS $fn$
    SELECT coalesce(jsonb_agg(jsonb_build_object('step_id', s.step_id, 'status', s.status,
                                                 'output', s.output)
                              ORDER BY s.started_at NULLS LAST, s.step_id), '[]')
    FROM run_steps s WHERE s.run_id = run;
$fn$;

-- Commits `rounds` (a JSON array of documents as stepwell_persist_changes takes, each holding
-- one change of the same run) one after another, each in its own transaction, and stops at
-- the first that was fenced off or did not apply. `results` holds one object per round tried:
-- {"base_seq": n}, {"base_seq": null} (the run was not at the round's `expect`) or
-- {"fenced": true}. When the last round committed ends the run, `final` is the run's row
-- and `final_steps` its steps (stepwell_run_steps) as they are after that commit; otherwise
-- both are NULL. Call it outside a transaction block.
-- It has a name of its own: stepwell_commit_rounds (0007) stays as it was for processes of
-- the previous release still running while a new one starts (they could not decode the
-- returned row). A later migration drops it.
CREATE PROCEDURE stepwell_write_rounds(
    node text, rounds jsonb, INOUT results jsonb DEFAULT NULL, INOUT final runs DEFAULT NULL,
    INOUT final_steps jsonb DEFAULT NULL
)
LANGUAGE plpgsql AS $pr$
#variable_conflict use_column
DECLARE
    doc jsonb;
    change jsonb;
    rid uuid;
    new_status text;
    n_events int;
    base bigint;
    ended boolean := false;
BEGIN
    results := '[]'::jsonb;
    FOR doc IN SELECT value FROM jsonb_array_elements(rounds) LOOP
        change := doc -> 'runs' -> 0;
        rid := (change ->> 'id')::uuid;
        new_status := change ->> 'status';
        n_events := (change ->> 'n_events')::int;
        PERFORM FROM shard_leases l
        WHERE l.shard = (change ->> 'shard')::int AND l.owner = node
          AND l.token = (change ->> 'token')::bigint AND l.expires_at > now();
        IF NOT FOUND THEN
            results := results || jsonb_build_array(jsonb_build_object('fenced', true));
            EXIT;
        END IF;
        -- As in stepwell_persist_changes: the round applies only where the one before it left
        -- the run, and its times are the moment of writing.
        UPDATE runs r SET
            last_seq = r.last_seq + n_events,
            status = coalesce(new_status, r.status),
            error = CASE WHEN new_status IS NULL THEN r.error
                         ELSE nullif(change -> 'error', 'null'::jsonb) END,
            output = coalesce(nullif(change -> 'output', 'null'::jsonb), r.output),
            started_at = CASE WHEN new_status = 'running'
                              THEN coalesce(r.started_at, clock_timestamp())
                              ELSE r.started_at END,
            completed_at = CASE WHEN new_status IN ('succeeded', 'failed', 'cancelled')
                                THEN clock_timestamp()
                                WHEN new_status IS NOT NULL THEN NULL
                                ELSE r.completed_at END,
            updated_at = clock_timestamp()
        WHERE r.id = rid
          AND (change ->> 'expect' IS NULL OR r.last_seq = (change ->> 'expect')::bigint)
        RETURNING r.last_seq - n_events INTO base;
        IF NOT FOUND THEN
            results := results || jsonb_build_array(jsonb_build_object('base_seq', NULL));
            EXIT;
        END IF;
        IF jsonb_array_length(doc -> 'steps') > 0 THEN
            INSERT INTO run_steps AS s (run_id, step_id, status, attempt, output, error,
                                        wake_at, started_at, completed_at)
            SELECT rid, c.step_id, c.status, c.attempt, c.output, c.error, c.wake_at,
                   CASE WHEN c.status IN ('running', 'succeeded', 'failed')
                        THEN clock_timestamp() END,
                   CASE WHEN c.status IN ('succeeded', 'failed', 'skipped', 'cancelled')
                        THEN clock_timestamp() END
            FROM jsonb_to_recordset(doc -> 'steps')
                AS c(step_id text, status text, attempt int, output jsonb, error jsonb,
                     wake_at timestamptz)
            ON CONFLICT (run_id, step_id) DO UPDATE SET
                status = EXCLUDED.status, attempt = EXCLUDED.attempt, output = EXCLUDED.output,
                error = EXCLUDED.error, wake_at = EXCLUDED.wake_at,
                started_at = CASE WHEN EXCLUDED.status = 'running' THEN clock_timestamp()
                                  ELSE coalesce(s.started_at, EXCLUDED.started_at) END,
                completed_at = EXCLUDED.completed_at;
        END IF;
        IF jsonb_array_length(doc -> 'attempts') > 0 THEN
            INSERT INTO step_attempts (run_id, step_id, attempt, status, output, error)
            SELECT rid, a.step_id, a.attempt, a.result, a.output, a.error
            FROM jsonb_to_recordset(doc -> 'attempts')
                AS a(step_id text, attempt int, result text, output jsonb, error jsonb)
            ON CONFLICT DO NOTHING;
        END IF;
        IF n_events > 0 THEN
            INSERT INTO run_events (run_id, seq, event, step_id, data, at)
            SELECT rid, base + e.ord, e.event, e.step_id, e.data, clock_timestamp()
            FROM jsonb_to_recordset(doc -> 'events')
                AS e(ord int, event text, step_id text, data jsonb);
        END IF;
        IF jsonb_array_length(doc -> 'commands') > 0 THEN
            UPDATE run_commands rc SET processed_at = clock_timestamp(), outcome = d.outcome
            FROM jsonb_to_recordset(doc -> 'commands') AS d(id bigint, outcome text)
            WHERE rc.id = d.id AND rc.run_id = rid;
        END IF;
        COMMIT;
        results := results || jsonb_build_array(jsonb_build_object('base_seq', base));
        ended := new_status IN ('succeeded', 'failed', 'cancelled');
    END LOOP;
    IF ended THEN
        SELECT r.* INTO final FROM runs r WHERE r.id = rid;
        final_steps := stepwell_run_steps(rid);
    END IF;
END
$pr$;
