-- Foundation: API keys, workflows, idempotency keys, the audit log.
-- depends:

CREATE TABLE api_keys (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id     text NOT NULL,
    role         text NOT NULL DEFAULT 'user',
    name         text NOT NULL,
    prefix       text NOT NULL,
    key_hash     text NOT NULL UNIQUE,
    expires_at   timestamptz,
    last_used_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_keys_owner ON api_keys (owner_id, created_at DESC);

CREATE TABLE workflows (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    family_id     uuid NOT NULL,
    owner_id      text NOT NULL,
    name          text NOT NULL,
    description   text NOT NULL DEFAULT '',
    workflow_type text NOT NULL CHECK (workflow_type IN
                      ('training', 'prediction', 'data-processing', 'general')),
    definition    jsonb NOT NULL,
    input_schema  jsonb,
    status        text NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'published', 'archived')),
    version       integer NOT NULL CHECK (version >= 1),
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    archived_at   timestamptz,
    UNIQUE (family_id, version)
);
CREATE INDEX workflows_owner ON workflows (owner_id, created_at DESC);
CREATE INDEX workflows_status ON workflows (status, created_at DESC);

CREATE TABLE idempotency_keys (
    owner_id        text NOT NULL,
    key             text NOT NULL,
    request_hash    text NOT NULL,
    state           text NOT NULL DEFAULT 'in_flight' CHECK (state IN ('in_flight', 'done')),
    response_status integer,
    response_body   text,
    content_type    text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

CREATE TABLE audit_logs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    user_id     text NOT NULL,
    owner_id    text NOT NULL,
    action      text NOT NULL,
    entity_type text NOT NULL,
    entity_id   text NOT NULL,
    changes     jsonb NOT NULL DEFAULT '{}',
    request_id  text
);
CREATE INDEX audit_logs_entity ON audit_logs (entity_type, entity_id, at DESC);
CREATE INDEX audit_logs_owner ON audit_logs (owner_id, at DESC);
CREATE INDEX audit_logs_user ON audit_logs (user_id, at DESC);
