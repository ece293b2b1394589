-- Deleted credentials, by company id and time, so that a replica whose change notification
-- connection was down can learn which companies were deleted meanwhile (changed rows it finds
-- by updated_at). Rows older than a day are pruned by the replica that leads the sweep; a
-- replica disconnected for longer than that forgets its whole cache instead. No secret is
-- stored here. (Numbered 0004: 0003 is left to a migration developed alongside.)
CREATE TABLE pleo_proxy_deletions (
    company_id text        NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX pleo_proxy_deletions_deleted_at ON pleo_proxy_deletions (deleted_at);

CREATE FUNCTION pleo_proxy_credentials_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pleo_proxy_deletions (company_id) VALUES (OLD.company_id);
    RETURN NULL;
END
$$;

CREATE TRIGGER pleo_proxy_credentials_deleted
    AFTER DELETE ON pleo_proxy_credentials
    FOR EACH ROW EXECUTE FUNCTION pleo_proxy_credentials_deleted();
