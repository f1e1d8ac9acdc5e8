-- A run started by a caller who waits for its end is inserted in the same call as its first
-- rounds, and in the same transaction as the first of them: one round trip and one commit
-- less per start, and its actor, which planned those rounds from the row it was about to
-- insert, sends them the moment they are planned.
-- The insert itself moves into a function, so that both ways of starting a run write the
-- same rows: insert_run (sql/runs.sql) calls it too.
-- depends: 0008.rounds_procedure_statements

-- The run row is the durable start command; its first event says so, and its audit entry
-- (when audit_user is not NULL) is written by the same statement. Returns no row when the
-- workflow is no longer published (the caller read it before), or when the parent's step
-- attempt already has its child run.
CREATE FUNCTION stepwell_insert_run(
    id uuid, shard integer, workflow_id uuid, workflow_version integer, owner_id text,
    trigger_type text, input jsonb, timeout_s double precision, scheduled_for timestamptz,
    parent_run_id uuid, parent_step_id text, parent_attempt integer, created_by text,
    schedule_id uuid, audit_user text, audit_request text, audit_changes jsonb
) RETURNS SETOF runs
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH run AS (
        INSERT INTO runs AS r (id, shard, workflow_id, workflow_version, owner_id,
                               trigger_type, input, timeout_s, scheduled_for, parent_run_id,
                               parent_step_id, parent_attempt, created_by, schedule_id,
                               last_seq)
        SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 1
        WHERE EXISTS (SELECT 1 FROM workflows w WHERE w.id = $3 AND w.status = 'published')
        ON CONFLICT DO NOTHING
        RETURNING r.*
    ), created AS (
        INSERT INTO run_events (run_id, seq, event, data)
        SELECT run.id, 1, 'run.created', jsonb_build_object('trigger_type', run.trigger_type)
        FROM run
    ), audited AS (
        INSERT INTO audit_logs (user_id, owner_id, action, entity_type, entity_id, changes,
                                request_id)
        SELECT $15, run.owner_id, 'start', 'run', run.id::text, $17, $16
        FROM run WHERE $15 IS NOT NULL
    )
    SELECT * FROM run;
END
$fn$;

-- Inserts a run (the arguments of stepwell_insert_run after `node`), then commits `rounds`
-- as stepwell_write_rounds does, the first of them in the insert's transaction. `created` is
-- the inserted row, or NULL when nothing was inserted (and no round was tried). When the
-- first round is fenced off, the run is still created, pending, for the shard's next owner.
-- Call it outside a transaction block.
CREATE PROCEDURE stepwell_start_rounds(
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
    CALL stepwell_write_rounds(node, rounds, results, final, final_steps);
END
$pr$;
