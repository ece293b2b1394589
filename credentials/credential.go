package credentials

import (
	"fmt"
	"log/slog"
	"time"
)

// Type is the kind of credential a company uses.
type Type string

// The credential types Pleo supports.
const (
	// OAuth2 is an access token plus a rotating refresh token, sent as a Bearer token.
	OAuth2 Type = "oauth2"
	// IntegratedAPIKey is one key per installation, sent as HTTP Basic user name.
	IntegratedAPIKey Type = "integrated_api_key"
	// StandaloneAPIKey is a manually created key, sent as HTTP Basic user name.
	StandaloneAPIKey Type = "standalone_api_key"
)

// Types lists every credential type, in a stable order (metrics use it).
var Types = []Type{OAuth2, IntegratedAPIKey, StandaloneAPIKey}

// Valid reports whether t is a known credential type.
func (t Type) Valid() bool {
	return t == OAuth2 || t == IntegratedAPIKey || t == StandaloneAPIKey
}

// IsAPIKey reports whether t is one of the API key types.
func (t Type) IsAPIKey() bool { return t == IntegratedAPIKey || t == StandaloneAPIKey }

// State is a stored credential's health as far as the store knows it.
type State string

// Stored states. The admin status adds derived states (unauthorized, expired).
const (
	// StateActive is a usable credential.
	StateActive State = "active"
	// StateReauthorizationRequired marks an OAuth credential whose refresh token was rejected:
	// a person must reconnect, and the token endpoint is not asked again until it changes.
	StateReauthorizationRequired State = "reauthorization_required"
)

// Credential is one Pleo company's credential. Secrets are Secret values, which never print.
type Credential struct {
	// CompanyID is the Pleo company's UUID, the key of every store.
	CompanyID string
	// TenantID optionally names the tenant of the external system this company is connected to.
	TenantID string
	// Type says which of the secrets below is used.
	Type Type
	// AccessToken and RefreshToken are set for OAuth2.
	AccessToken  Secret
	RefreshToken Secret
	// APIKey is set for the API key types.
	APIKey Secret
	// ExpiresAt is the access token's expiry (OAuth2) or the key's (API keys); zero means
	// unknown (OAuth2: refresh before first use) or never (API keys).
	ExpiresAt time.Time
	// State is StateActive unless a refresh was rejected.
	State State
	// LastRefreshedAt is when the OAuth tokens were last obtained.
	LastRefreshedAt time.Time
	// LastError describes the last refresh failure (never a secret).
	LastError string
	// Version is the store's revision of this record, for compare-and-swap updates. Stores
	// set it; callers hand it back unchanged to Update.
	Version int64
}

// Validate checks that the credential is complete for its type.
func (c Credential) Validate() error {
	if !ValidCompanyID(c.CompanyID) {
		return &FieldError{Field: "company_id", Reason: "must be a UUID"}
	}
	if len(c.TenantID) > 256 {
		return &FieldError{Field: "tenant_id", Reason: "is longer than 256 characters"}
	}
	switch c.Type {
	case OAuth2:
		if c.RefreshToken.IsZero() {
			return &FieldError{Field: "refresh_token", Reason: "is required for oauth2"}
		}
		if !c.APIKey.IsZero() {
			return &FieldError{Field: "api_key", Reason: "is not allowed for oauth2"}
		}
	case IntegratedAPIKey, StandaloneAPIKey:
		if c.APIKey.IsZero() {
			return &FieldError{Field: "api_key", Reason: "is required for " + string(c.Type)}
		}
		if !c.AccessToken.IsZero() || !c.RefreshToken.IsZero() {
			return &FieldError{Field: "access_token", Reason: "tokens are not allowed for " + string(c.Type)}
		}
	case "":
		return &FieldError{Field: "type", Reason: "is required"}
	default:
		return &FieldError{Field: "type", Reason: fmt.Sprintf("%q is not one of oauth2, integrated_api_key, standalone_api_key", string(c.Type))}
	}
	switch c.State {
	case "", StateActive, StateReauthorizationRequired:
	default:
		return &FieldError{Field: "state", Reason: fmt.Sprintf("%q is not a known state", string(c.State))}
	}
	for _, f := range []struct {
		name string
		t    time.Time
	}{{"expires_at", c.ExpiresAt}, {"last_refreshed_at", c.LastRefreshedAt}} {
		// The stores write times as RFC 3339 in UTC, which has four-digit years only.
		if y := f.t.UTC().Year(); !f.t.IsZero() && (y < 0 || y > 9999) {
			return &FieldError{Field: f.name, Reason: "is outside the years 0000 to 9999 in UTC"}
		}
	}
	for _, s := range []Secret{c.AccessToken, c.RefreshToken, c.APIKey} {
		if !validSecret(s.Reveal()) {
			return &FieldError{Field: "secret", Reason: "contains whitespace or control characters"}
		}
	}
	return nil
}

// validSecret refuses values that cannot travel in an HTTP header unchanged.
func validSecret(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] == 0x7f {
			return false
		}
	}
	return true
}

// Expired reports whether the API key, or the OAuth access token, is past its expiry at now.
func (c Credential) Expired(now time.Time) bool {
	return !c.ExpiresAt.IsZero() && !now.Before(c.ExpiresAt)
}

// LogValue shows metadata only.
func (c Credential) LogValue() slog.Value {
	attrs := []slog.Attr{
		slog.String("company_id", c.CompanyID),
		slog.String("type", string(c.Type)),
	}
	if c.TenantID != "" {
		attrs = append(attrs, slog.String("tenant_id", c.TenantID))
	}
	if !c.ExpiresAt.IsZero() {
		attrs = append(attrs, slog.Time("expires_at", c.ExpiresAt))
	}
	attrs = append(attrs, slog.Int64("version", c.Version))
	return slog.GroupValue(attrs...)
}

// Metadata returns the credential without its secrets (access token, refresh token, API key).
func (c Credential) Metadata() Credential {
	c.AccessToken, c.RefreshToken, c.APIKey = "", "", ""
	return c
}

// String shows metadata only.
func (c Credential) String() string {
	return fmt.Sprintf("credential{company_id=%s type=%s version=%d}", c.CompanyID, c.Type, c.Version)
}

// GoString shows metadata only, for %#v.
func (c Credential) GoString() string { return c.String() }

// Format shows metadata only, for every verb.
func (c Credential) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(c.String())) }

// ValidCompanyID reports whether id is a UUID in its canonical textual form
// (8-4-4-4-12 hexadecimal digits, either case).
func ValidCompanyID(id string) bool {
	if len(id) != 36 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
	}
	return true
}
