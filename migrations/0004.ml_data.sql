-- ML data: datasets with uploads, immutable versions and profiles; a model registry with
-- versions, lineage and aliases.
-- depends: 0003.triggers

CREATE TABLE datasets (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id     text NOT NULL,
    name         text NOT NULL,
    description  text NOT NULL DEFAULT '',
    dataset_type text NOT NULL DEFAULT 'tabular' CHECK (dataset_type IN
                     ('tabular', 'time-series', 'image', 'text', 'other')),
    status       text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'deleted')),
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz
);
CREATE INDEX datasets_owner ON datasets (owner_id, created_at DESC);

-- An upload gathers files (sent through Stepwell or straight to storage by signed URL) until
-- a version is made from it.
CREATE TABLE dataset_uploads (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    dataset_id  uuid NOT NULL REFERENCES datasets (id),
    method      text NOT NULL CHECK (method IN ('multipart', 'signed_url')),
    status      text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'used')),
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);

CREATE TABLE dataset_files (
    upload_id    uuid NOT NULL REFERENCES dataset_uploads (id) ON DELETE CASCADE,
    name         text NOT NULL,
    storage_key  text NOT NULL,
    content_type text,
    size_bytes   bigint,
    sha256       text,
    PRIMARY KEY (upload_id, name)
);

CREATE TABLE dataset_versions (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    dataset_id     uuid NOT NULL REFERENCES datasets (id),
    version        integer NOT NULL CHECK (version >= 1),
    description    text NOT NULL DEFAULT '',
    files          jsonb NOT NULL,
    total_digest   text NOT NULL,
    size_bytes     bigint NOT NULL,
    row_count      bigint,
    profile_status text NOT NULL DEFAULT 'pending' CHECK (profile_status IN
                       ('pending', 'running', 'succeeded', 'failed')),
    profile        jsonb,
    profile_error  text,
    created_by     text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (dataset_id, version)
);

CREATE TABLE models (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id    text NOT NULL,
    name        text NOT NULL,
    description text NOT NULL DEFAULT '',
    model_type  text NOT NULL CHECK (model_type IN
                    ('classification', 'regression', 'clustering', 'generation')),
    framework   text NOT NULL CHECK (framework IN
                    ('tensorflow', 'pytorch', 'scikit-learn', 'jax')),
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'archived')),
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    archived_at timestamptz
);
CREATE INDEX models_owner ON models (owner_id, created_at DESC);

CREATE TABLE model_versions (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    model_id           uuid NOT NULL REFERENCES models (id),
    version            integer NOT NULL CHECK (version >= 1),
    artifact_uri       text NOT NULL,
    framework          text NOT NULL CHECK (framework IN
                           ('tensorflow', 'pytorch', 'scikit-learn', 'jax')),
    description        text NOT NULL DEFAULT '',
    metrics            jsonb NOT NULL DEFAULT '{}',
    parameters         jsonb NOT NULL DEFAULT '{}',
    metadata           jsonb NOT NULL DEFAULT '{}',
    dataset_version_id uuid REFERENCES dataset_versions (id),
    training_job_id    uuid,
    created_by         text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (model_id, version)
);
CREATE INDEX model_versions_dataset ON model_versions (dataset_version_id);

-- Each alias (champion, challenger, any name) points at one version of its model.
CREATE TABLE model_aliases (
    model_id   uuid NOT NULL REFERENCES models (id),
    alias      text NOT NULL,
    version_id uuid NOT NULL REFERENCES model_versions (id),
    updated_by text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, alias)
);
