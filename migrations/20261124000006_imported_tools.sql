-- Tools imported from OpenAPI documents (POST /api/admin/openapi) and their review
-- (PATCH /api/admin/tools/{id}). Only rows that are reviewed AND enabled reach agents.
CREATE TABLE imported_tools (
    id                UUID PRIMARY KEY,
    -- OpenAI function names: ^[a-zA-Z0-9_-]{1,64}$. A re-import matches tools by name.
    name              TEXT NOT NULL UNIQUE CHECK (name ~ '^[a-zA-Z0-9_-]{1,64}$'),
    method            TEXT NOT NULL CHECK (method IN ('GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE')),
    -- The path template as in the document, e.g. /pets/{petId}.
    path              TEXT NOT NULL,
    base_url          TEXT NOT NULL,
    description       TEXT NOT NULL,
    -- The JSON Schema of the arguments object, $refs inlined.
    parameters        JSONB NOT NULL,
    -- How to build the HTTP request: {"arguments": [{"argument", "in": path|query|header|cookie|body,
    -- "name", "required", "explode"}], "body_content_type"}.
    request           JSONB NOT NULL,
    access            TEXT NOT NULL CHECK (access IN ('read', 'write')),
    requires_approval BOOLEAN NOT NULL,
    enabled           BOOLEAN NOT NULL DEFAULT true,
    reviewed          BOOLEAN NOT NULL DEFAULT false,
    -- The document's info.title and info.version.
    source            TEXT NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    reviewed_at       TIMESTAMPTZ
);
