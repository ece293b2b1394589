// Package credentials holds the per-company Pleo credentials the sidecar injects: the model
// (OAuth 2.0 tokens, Integrated and Standalone API keys), the stores that persist them
// (memory://, file://, postgres://), the LRU cache in front of them, and the Broker that hands
// the proxy a ready-to-send Authorization value, refreshing OAuth tokens so that a rotated
// refresh token is never lost and never used twice.
package credentials
