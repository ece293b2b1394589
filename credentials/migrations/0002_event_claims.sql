-- The last credential state change an event was sent for, per company: the replica whose
-- upsert changes the row sends the event (PLEO_PROXY_EVENTS_URL), so that many replicas send
-- one event per change. No secret is stored here.
CREATE TABLE pleo_proxy_event_claims (
    company_id text        PRIMARY KEY,
    state      text        NOT NULL,
    version    bigint      NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now()
);
