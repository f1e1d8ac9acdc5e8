-- Run changes are written by a function, so that one procedure call can commit a run's
-- rounds of pure steps one transaction after another, without a round trip between them.
-- depends: 0006.hot_path_without_fk_checks

-- The change statement (it was the named query persist_run_changes):
-- Group commit: the changes of many runs (each run at most once) in one statement, so one
-- transaction and one WAL flush. $1 node_id; $2 one JSON document of arrays of objects:
--   runs:     id, shard, token (fencing), n_events, status (NULL: unchanged), error, output,
--             expect (the last_seq the run must be at; NULL: any; see below)
--   steps:    run_id, step_id, status, attempt, output, error, wake_at
--   events:   run_id, ord (position within its run's change: 1, 2, ...), event, step_id, data
--   commands: run_id, id, outcome (commands this change completes)
--   attempts: run_id, step_id, attempt, result, output, error (finished attempts, write-once)
-- `expect` is for a round planned before the round it follows had committed: it applies only
-- if the run is exactly where that round left it; otherwise it writes nothing.
-- A run's rows are written only while this node holds its shard's lease with that token.
-- Times are clock_timestamp(), the moment of writing, so that the rounds committed one after
-- another by stepwell_commit_rounds carry times in their order.
-- Returns (id, base_seq) for each run within its lease: base_seq is the seq before its first
-- new event, or NULL when the change did not apply (the run was not at `expect`). A run
-- missing from the result was fenced off.
CREATE FUNCTION stepwell_persist_changes(node text, doc jsonb)
RETURNS TABLE (id uuid, base_seq bigint)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH changed AS (
        SELECT * FROM jsonb_to_recordset(doc -> 'runs')
            AS c(id uuid, shard int, token bigint, n_events int, status text, error jsonb,
                 output jsonb, expect bigint)
    ), fenced AS (
        SELECT c.* FROM changed c
        JOIN shard_leases l ON l.shard = c.shard AND l.owner = node AND l.token = c.token
                           AND l.expires_at > now()
    ), run AS (
        UPDATE runs r SET
            last_seq = r.last_seq + f.n_events,
            status = coalesce(f.status, r.status),
            error = CASE WHEN f.status IS NULL THEN r.error ELSE f.error END,
            output = coalesce(f.output, r.output),
            started_at = CASE WHEN f.status = 'running'
                              THEN coalesce(r.started_at, clock_timestamp())
                              ELSE r.started_at END,
            completed_at = CASE WHEN f.status IN ('succeeded', 'failed', 'cancelled')
                                THEN clock_timestamp()
                                WHEN f.status IS NOT NULL THEN NULL
                                ELSE r.completed_at END,
            updated_at = clock_timestamp()
        FROM fenced f
        WHERE r.id = f.id AND (f.expect IS NULL OR r.last_seq = f.expect)
        RETURNING r.id, r.last_seq - f.n_events AS base_seq
    ), steps AS (
        INSERT INTO run_steps AS s (run_id, step_id, status, attempt, output, error, wake_at,
                                    started_at, completed_at)
        SELECT c.run_id, c.step_id, c.status, c.attempt, c.output, c.error, c.wake_at,
               CASE WHEN c.status IN ('running', 'succeeded', 'failed') THEN clock_timestamp() END,
               CASE WHEN c.status IN ('succeeded', 'failed', 'skipped', 'cancelled') THEN clock_timestamp() END
        FROM jsonb_to_recordset(doc -> 'steps')
            AS c(run_id uuid, step_id text, status text, attempt int, output jsonb, error jsonb,
                 wake_at timestamptz)
        JOIN run ON run.id = c.run_id
        ON CONFLICT (run_id, step_id) DO UPDATE SET
            status = EXCLUDED.status, attempt = EXCLUDED.attempt, output = EXCLUDED.output,
            error = EXCLUDED.error, wake_at = EXCLUDED.wake_at,
            started_at = CASE WHEN EXCLUDED.status = 'running' THEN clock_timestamp()
                              ELSE coalesce(s.started_at, EXCLUDED.started_at) END,
            completed_at = EXCLUDED.completed_at
    ), attempts AS (
        INSERT INTO step_attempts (run_id, step_id, attempt, status, output, error)
        SELECT a.run_id, a.step_id, a.attempt, a.result, a.output, a.error
        FROM jsonb_to_recordset(doc -> 'attempts')
            AS a(run_id uuid, step_id text, attempt int, result text, output jsonb, error jsonb)
        JOIN run ON run.id = a.run_id
        ON CONFLICT DO NOTHING
    ), events AS (
        INSERT INTO run_events (run_id, seq, event, step_id, data, at)
        SELECT e.run_id, run.base_seq + e.ord, e.event, e.step_id, e.data, clock_timestamp()
        FROM jsonb_to_recordset(doc -> 'events')
            AS e(run_id uuid, ord int, event text, step_id text, data jsonb)
        JOIN run ON run.id = e.run_id
    ), commands AS (
        UPDATE run_commands rc SET processed_at = clock_timestamp(), outcome = d.outcome
        FROM jsonb_to_recordset(doc -> 'commands') AS d(run_id uuid, id bigint, outcome text)
        JOIN run ON run.id = d.run_id
        WHERE rc.id = d.id
    )
    SELECT f.id, run.base_seq FROM fenced f LEFT JOIN run ON run.id = f.id;
END
$fn$;

-- Commits `rounds` (an array of documents as above, each holding one run's change) one after
-- another, each in its own transaction, and stops at the first that was fenced off or did not
-- apply. `results` holds one object per round tried: {"base_seq": n}, {"base_seq": null} (did
-- not apply) or {"fenced": true}. Call it outside a transaction block.
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
