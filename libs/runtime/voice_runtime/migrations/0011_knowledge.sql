-- Knowledge bases of a tenant (control-api), their documents and the documents' chunks, which brain retrieves
-- into each turn of an agent that attaches the base (AgentConfig.knowledge_base_ids).
--
-- Retrieval is lexical first: a generated tsvector (english configuration: stemmed, stop words dropped) with a GIN
-- index for full-text ranking, and the words of each base with a trigram GIN index (pg_trgm, a trusted extension:
-- the database owner may create it), which turn a word a transcript got slightly wrong into the base's own word
-- before the full-text search. Vectors (when an embedding endpoint is configured) are stored as real[], unit
-- length, so cosine similarity is a dot product; there is no vector index (no pgvector).
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE IF NOT EXISTS knowledge_bases (
    id              text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    tenant_id       text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name            text NOT NULL,
    description     text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    version         integer NOT NULL DEFAULT 1,
    UNIQUE (tenant_id, name)
);

CREATE TABLE IF NOT EXISTS knowledge_documents (
    id                  text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    tenant_id           text NOT NULL,
    knowledge_base_id   text NOT NULL REFERENCES knowledge_bases(id) ON DELETE CASCADE,
    name                text NOT NULL,              -- the uploaded file's name: the source a turn cites
    content_type        text NOT NULL,              -- text/plain, text/markdown, text/html, application/pdf
    size_bytes          integer NOT NULL,
    sha256              text NOT NULL,
    pages               integer,                    -- PDF only
    chars               integer NOT NULL,           -- extracted text
    chunks              integer NOT NULL,
    embedding_model     text,                       -- null: the chunks have no vectors
    created_at          timestamptz NOT NULL DEFAULT now(),
    created_by          text
);
CREATE INDEX IF NOT EXISTS knowledge_documents_base ON knowledge_documents (tenant_id, knowledge_base_id, created_at);

CREATE TABLE IF NOT EXISTS knowledge_chunks (
    id                  bigserial PRIMARY KEY,
    tenant_id           text NOT NULL,
    knowledge_base_id   text NOT NULL,
    document_id         text NOT NULL REFERENCES knowledge_documents(id) ON DELETE CASCADE,
    ordinal             integer NOT NULL,
    content             text NOT NULL,
    tsv                 tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, content)) STORED,
    embedding           real[],
    UNIQUE (document_id, ordinal)
);
CREATE INDEX IF NOT EXISTS knowledge_chunks_scope ON knowledge_chunks (tenant_id, knowledge_base_id);
CREATE INDEX IF NOT EXISTS knowledge_chunks_tsv ON knowledge_chunks USING gin (tsv);

-- the distinct words (4+ letters, lower case) of a base's documents: the vocabulary misheard words are matched to
CREATE TABLE IF NOT EXISTS knowledge_words (
    tenant_id           text NOT NULL,
    knowledge_base_id   text NOT NULL REFERENCES knowledge_bases(id) ON DELETE CASCADE,
    word                text NOT NULL,
    PRIMARY KEY (knowledge_base_id, word)
);
CREATE INDEX IF NOT EXISTS knowledge_words_trgm ON knowledge_words USING gin (word gin_trgm_ops);

-- the dot product of two vectors of one length (unit vectors: their cosine similarity)
CREATE OR REPLACE FUNCTION knowledge_dot(a real[], b real[]) RETURNS double precision
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT sum(x::double precision * y) FROM unnest(a, b) AS v(x, y) $$;

-- the chunks a turn's reply was given (ids, document names, scores), as brain reported them in turn.completed
ALTER TABLE call_turns ADD COLUMN IF NOT EXISTS sources jsonb;
