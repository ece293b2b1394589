package credentials

import (
	"encoding/base64"
	"fmt"
	"log/slog"
)

// Grant is what the proxy needs to authenticate one request: the company, the credential type
// and the precomputed Authorization header value. It prints without its secret.
type Grant struct {
	// CompanyID is the company the grant belongs to.
	CompanyID string
	// Type is the credential type the grant came from.
	Type   Type
	header string
	values []string // []string{header}, built once, shared read-only
	// cooling: the credential was in a 401 cool-down when the grant was handed out, so an
	// accepted answer must end it (Broker.Accepted).
	cooling bool
}

// NewGrant builds the grant for a credential: Bearer for OAuth2, HTTP Basic with the key as
// user name and an empty password for API keys.
func NewGrant(c Credential) Grant {
	g := Grant{CompanyID: c.CompanyID, Type: c.Type}
	switch c.Type {
	case OAuth2:
		g.header = "Bearer " + c.AccessToken.Reveal()
	case IntegratedAPIKey, StandaloneAPIKey:
		g.header = BasicAuthorization(c.APIKey.Reveal())
	}
	if g.header != "" {
		g.values = []string{g.header}
	}
	return g
}

// BasicAuthorization is the Authorization value Pleo expects for an API key:
// "Basic " + base64(key + ":").
func BasicAuthorization(key string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(key+":"))
}

// Authorization returns the Authorization header value. Call it only to send the request.
func (g Grant) Authorization() string { return g.header }

// HeaderValues returns the Authorization value as a header value slice, built once per
// credential so that setting it allocates nothing. Callers must not modify it.
func (g Grant) HeaderValues() []string { return g.values }

// IsZero reports whether the grant carries no credential.
func (g Grant) IsZero() bool { return g.header == "" }

// Same reports whether two grants would send the same Authorization value.
func (g Grant) Same(o Grant) bool { return g.header == o.header }

// String shows metadata only.
func (g Grant) String() string {
	return "grant{company_id=" + g.CompanyID + " type=" + string(g.Type) + "}"
}

// GoString shows metadata only.
func (g Grant) GoString() string { return g.String() }

// Format shows metadata only, for every verb (%d and %x included).
func (g Grant) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(g.String())) }

// LogValue shows metadata only.
func (g Grant) LogValue() slog.Value {
	return slog.GroupValue(slog.String("company_id", g.CompanyID), slog.String("type", string(g.Type)))
}
