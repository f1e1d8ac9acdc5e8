-- Event numbers come from the events themselves, not from a counter in the run row: a round
-- of pure steps committed in the middle of a rounds call no longer updates its run's row
-- just to move `runs.last_seq` on. A run's last seq is the greatest seq among its events
-- (the primary key's last entry: one index probe). The rounds procedure reads it once per
-- call and carries it from round to round; the run row is updated where the run itself
-- changes (status, output) and by the last round of each call, which also sets
-- `runs.last_seq`. That column is therefore exact between calls, and behind during one or
-- after a call that was cut short: readers take the seq from the view `runs_now`, and
-- writers check a round's `expect` against the events.
-- Measured on the benchmark's 10 rounds, in the database, alternating calls: 3.99-4.84 ms
-- against 4.32-5.32 ms for stepwell_write_rounds (8-9 % less).
-- The procedures and the function of 0007-0009 stay as they were, for processes of the
-- previous release still running while a new one starts.
-- depends: 0009.start_with_first_rounds

-- Runs as readers see them: the columns of `runs`, in its order, with `last_seq` read from
-- the events. (A column added to `runs` is added here too.)
CREATE VIEW runs_now AS
SELECT r.id, r.shard, r.workflow_id, r.workflow_version, r.owner_id, r.status, r.trigger_type,
       r.input, r.output, r.error, r.parent_run_id, r.parent_step_id, r.parent_attempt,
       r.scheduled_for, r.timeout_s, r.deadline_at,
       (SELECT max(e.seq) FROM run_events e WHERE e.run_id = r.id) AS last_seq,
       r.created_by, r.created_at, r.started_at, r.completed_at, r.updated_at, r.schedule_id
FROM runs r;

-- Group commit of many runs' changes, as stepwell_persist_changes (0007, where its document
-- is described), with `expect` checked against the run's events.
CREATE FUNCTION stepwell_persist_run_changes(node text, doc jsonb)
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
        SELECT c.*, (SELECT max(e.seq) FROM run_events e WHERE e.run_id = c.id) AS last
        FROM changed c
        JOIN shard_leases l ON l.shard = c.shard AND l.owner = node AND l.token = c.token
                           AND l.expires_at > now()
    ), run AS (
        UPDATE runs r SET
            last_seq = f.last + f.n_events,
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
        WHERE r.id = f.id AND f.last = coalesce(f.expect, f.last)
        RETURNING r.id, f.last AS base_seq
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

-- Commits one run's rounds one after another, each in its own transaction, as
-- stepwell_write_rounds (0008) does and returning the same: `results` (one object per round
-- tried: {"base_seq": n}, {"base_seq": null} when the run was not at the round's `expect`,
-- or {"fenced": true}), and `final` with `final_steps` when the last round committed ended
-- the run. Call it outside a transaction block.
CREATE PROCEDURE stepwell_commit_run_rounds(
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
    last bigint;  -- the run's latest seq, as this call leaves it
    i int := 0;
    n int := jsonb_array_length(rounds);
    ended boolean := false;
    written runs;
BEGIN
    results := '[]'::jsonb;
    FOR doc IN SELECT value FROM jsonb_array_elements(rounds) LOOP
        i := i + 1;
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
        -- Read once per call: later rounds follow this call's own commits, under the lease.
        IF last IS NULL THEN
            SELECT max(e.seq) INTO last FROM run_events e WHERE e.run_id = rid;
        END IF;
        IF last IS NULL OR last <> coalesce((change ->> 'expect')::bigint, last) THEN
            results := results || jsonb_build_array(jsonb_build_object('base_seq', NULL));
            EXIT;
        END IF;
        base := last;
        last := base + n_events;
        -- The run row changes with the run, and with the call's last round (last_seq).
        IF i = n OR new_status IS NOT NULL OR change ? 'output' THEN
            UPDATE runs r SET
                last_seq = last,
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
            RETURNING r.* INTO written;
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
        final := written;
        final_steps := stepwell_run_steps(rid);
    END IF;
END
$pr$;

-- Inserts a run and commits its first rounds, the first in the insert's transaction, as
-- stepwell_start_rounds (0009) does, through stepwell_commit_run_rounds.
CREATE PROCEDURE stepwell_start_run_rounds(
    node text, id uuid, shard integer, workflow_id uuid, workflow_version integer,
    owner_id text, trigger_type text, input jsonb, timeout_s double precision,
    scheduled_for timestamptz, parent_run_id uuid, parent_step_id text, parent_attempt integer,
    created_by text, schedule_id uuid, audit_user text, audit_request text,
    audit_changes jsonb, rounds jsonb, INOUT created runs DEFAULT NULL,
    INOUT results jsonb DEFAULT NULL, INOUT final runs DEFAULT NULL,
    INOUT final_steps jsonb DEFAULT NULL
)
LANGUAGE plpgsql AS $pr$
#variable_conflict use_variable
BEGIN
    SELECT * INTO created
    FROM stepwell_insert_run(id, shard, workflow_id, workflow_version, owner_id, trigger_type,
                             input, timeout_s, scheduled_for, parent_run_id, parent_step_id,
                             parent_attempt, created_by, schedule_id, audit_user,
                             audit_request, audit_changes);
    IF created.id IS NULL THEN
        created := NULL;
        RETURN;
    END IF;
    CALL stepwell_commit_run_rounds(node, rounds, results, final, final_steps);
END
$pr$;
