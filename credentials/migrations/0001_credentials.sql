-- One credential per Pleo company. Secrets are sealed (AES-256-GCM envelope bound to the
-- company and the field) when secrets_sealed is true, plain otherwise.
CREATE TABLE pleo_proxy_credentials (
    company_id           text        PRIMARY KEY CHECK (company_id = lower(company_id)),
    tenant_id            text,
    type                 text        NOT NULL,
    access_token         text        NOT NULL DEFAULT '',
    refresh_token        text        NOT NULL DEFAULT '',
    api_key              text        NOT NULL DEFAULT '',
    secrets_sealed       boolean     NOT NULL DEFAULT false,
    expires_at           timestamptz,
    state                text        NOT NULL DEFAULT 'active',
    last_refreshed_at    timestamptz,
    last_error           text        NOT NULL DEFAULT '',
    -- Bumped by every write of the fields above; Update is a compare-and-swap on it.
    version              bigint      NOT NULL DEFAULT 1,
    -- The refresh lease: written (and committed) before a replica calls the token endpoint,
    -- cleared by the commit of the rotated pair. While it is unexpired and held by another
    -- replica, nobody else calls the token endpoint for this credential.
    refresh_lease_holder text,
    refresh_lease_until  timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    -- Deferred, so one batch may move a tenant from one company to another.
    CONSTRAINT pleo_proxy_credentials_tenant_key UNIQUE (tenant_id) DEFERRABLE INITIALLY DEFERRED
);

-- Every committed change announces the company id (never a secret) on the channel
-- pleo_proxy_credentials, with the writer's origin so a replica can skip its own echo.
-- Lease-only updates announce nothing.
CREATE FUNCTION pleo_proxy_credentials_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    id text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        id := OLD.company_id;
    ELSE
        id := NEW.company_id;
    END IF;
    PERFORM pg_notify('pleo_proxy_credentials',
        id || ' ' || coalesce(current_setting('pleo_proxy.origin', true), ''));
    RETURN NULL;
END
$$;

CREATE TRIGGER pleo_proxy_credentials_changed_insert_delete
    AFTER INSERT OR DELETE ON pleo_proxy_credentials
    FOR EACH ROW EXECUTE FUNCTION pleo_proxy_credentials_notify();

CREATE TRIGGER pleo_proxy_credentials_changed_update
    AFTER UPDATE ON pleo_proxy_credentials
    FOR EACH ROW
    WHEN ((OLD.version, OLD.tenant_id, OLD.type, OLD.access_token, OLD.refresh_token, OLD.api_key,
           OLD.secrets_sealed, OLD.expires_at, OLD.state, OLD.last_refreshed_at, OLD.last_error)
          IS DISTINCT FROM
          (NEW.version, NEW.tenant_id, NEW.type, NEW.access_token, NEW.refresh_token, NEW.api_key,
           NEW.secrets_sealed, NEW.expires_at, NEW.state, NEW.last_refreshed_at, NEW.last_error))
    EXECUTE FUNCTION pleo_proxy_credentials_notify();
