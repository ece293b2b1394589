// Package config parses and validates the sidecar's configuration from the environment.
//
// Every variable carries the prefix PLEO_PROXY_ (see Prefix). Parse takes the environment as a
// map, so tests never touch the process environment; Environ converts os.Environ's form and
// LoadEnvFile merges a dotenv file under it. Parse reports every problem at once, one per
// line, each naming its variable, and never prints a secret's value.
package config

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/joho/godotenv"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
)

// Prefix starts the name of every variable this package reads.
const Prefix = "PLEO_PROXY_"

// Environments Parse accepts in PLEO_PROXY_ENVIRONMENT.
const (
	Production = "production"
	Staging    = "staging"
)

// Log formats Parse accepts in PLEO_PROXY_LOG_FORMAT.
const (
	LogFormatText = "text"
	LogFormatJSON = "json"
)

// EncryptionKeySize is the length in bytes of one decoded PLEO_PROXY_ENCRYPTION_KEY (AES-256).
const EncryptionKeySize = 32

// MaxStorePollInterval bounds PLEO_PROXY_STORE_POLL_INTERVAL: the contract promises that the
// file store picks up changes made by others within 10 seconds.
const MaxStorePollInterval = 10 * time.Second

// endpoints are the Pleo URLs an environment implies.
type endpoints struct{ upstream, token, authorize string }

var defaultEndpoints = map[string]endpoints{
	Production: {
		upstream:  "https://external.pleo.io",
		token:     "https://auth.pleo.io/oauth/token",
		authorize: "https://auth.pleo.io/oauth/authorize",
	},
	Staging: {
		upstream:  "https://external.staging.pleo.io",
		token:     "https://auth.staging.pleo.io/oauth/token",
		authorize: "https://auth.staging.pleo.io/oauth/authorize",
	},
}

// Config is the sidecar's validated configuration. Parse fills every field, defaults resolved.
//
// Printing a Config (any fmt verb, log/slog, encoding/json) shows only what is not secret:
// secrets are credentials.Secret, encryption keys and client tokens are shown as counts, and a
// password inside Store is masked.
type Config struct {
	// Environment is "production" or "staging" (PLEO_PROXY_ENVIRONMENT); it picks the default
	// upstream and OAuth URLs.
	Environment string
	// UpstreamURL is where requests are forwarded (PLEO_PROXY_UPSTREAM_URL); it may carry a
	// path prefix.
	UpstreamURL *url.URL
	// ListenAddr is the data listener's host:port (PLEO_PROXY_LISTEN_ADDR).
	ListenAddr string
	// AdminAddr is the admin listener's host:port (PLEO_PROXY_ADMIN_ADDR).
	AdminAddr string
	// Store names the credential store (PLEO_PROXY_STORE): file:///absolute/path,
	// postgres://… or postgresql://…, or memory://. A postgres URL may hold a password: log
	// RedactedStore, never Store.
	Store string
	// EncryptionKeys are the AES-256 keys for the file store, newest first; the first encrypts,
	// all decrypt (PLEO_PROXY_ENCRYPTION_KEY or _FILE). Empty: the store is not encrypted.
	EncryptionKeys [][]byte
	// OAuthClientID is the integration's OAuth client id (PLEO_PROXY_OAUTH_CLIENT_ID).
	OAuthClientID string
	// OAuthClientSecret is the integration's OAuth client secret
	// (PLEO_PROXY_OAUTH_CLIENT_SECRET or _FILE).
	OAuthClientSecret credentials.Secret
	// OAuthTokenURL is the OAuth token endpoint (PLEO_PROXY_OAUTH_TOKEN_URL).
	OAuthTokenURL *url.URL
	// OAuthAuthorizeURL is the OAuth authorization endpoint (PLEO_PROXY_OAUTH_AUTHORIZE_URL).
	OAuthAuthorizeURL *url.URL
	// OAuthScopes are the scopes the consent flow asks for (PLEO_PROXY_OAUTH_SCOPES), in order,
	// without duplicates.
	OAuthScopes []string
	// OAuthRedirectURL is the consent flow's redirect_uri (PLEO_PROXY_OAUTH_REDIRECT_URL); its
	// path is the callback's. Nil when unset.
	OAuthRedirectURL *url.URL
	// ConnectAddr is the consent flow listener's host:port (PLEO_PROXY_CONNECT_ADDR); empty
	// turns the consent flow off.
	ConnectAddr string
	// ConnectSuccessURL, when set (PLEO_PROXY_CONNECT_SUCCESS_URL), is where a completed
	// consent flow sends the browser (303, with tenant_id and company_id added to its query)
	// instead of showing the result page. Nil when unset.
	ConnectSuccessURL *url.URL
	// ConnectKeys are the HMAC-SHA256 keys of signed connect links (PLEO_PROXY_CONNECT_KEY or
	// _FILE: comma- or newline-separated standard base64, each at least ConnectKeySize
	// bytes), newest first: the first signs, all verify. Empty: derived from EncryptionKeys
	// when there are any (see connect.DeriveLinkKey).
	ConnectKeys [][]byte
	// ConnectUnsignedLinks accepts GET /connect?tenant_id=… without a signature
	// (PLEO_PROXY_CONNECT_UNSIGNED_LINKS), for an ingress that authorises /connect itself.
	ConnectUnsignedLinks bool
	// KeepaliveInterval is how long an OAuth credential may go unrefreshed before it is
	// refreshed anyway (PLEO_PROXY_KEEPALIVE_INTERVAL).
	KeepaliveInterval time.Duration
	// CompanyHeader is the header that selects a company by id (PLEO_PROXY_COMPANY_HEADER), in
	// canonical form.
	CompanyHeader string
	// TenantHeader is the header that selects a company by tenant id (PLEO_PROXY_TENANT_HEADER),
	// in canonical form.
	TenantHeader string
	// DefaultCompanyID is the company for requests that name none
	// (PLEO_PROXY_DEFAULT_COMPANY_ID), lower-case; empty when unset.
	DefaultCompanyID string
	// RefreshBefore is how long before expiry an access token is refreshed
	// (PLEO_PROXY_REFRESH_BEFORE); zero or more.
	RefreshBefore time.Duration
	// MaxReplayBytes is the largest request body buffered for the retry after a 401
	// (PLEO_PROXY_MAX_REPLAY_BYTES); zero or more.
	MaxReplayBytes int64
	// UpstreamTimeout bounds the wait for the upstream's response headers
	// (PLEO_PROXY_UPSTREAM_TIMEOUT).
	UpstreamTimeout time.Duration
	// UpstreamMaxConns bounds the connections open to the upstream at once
	// (PLEO_PROXY_UPSTREAM_MAX_CONNS); requests beyond it wait for one to be free.
	UpstreamMaxConns int
	// MaxClientConns bounds the client connections the data listener serves at once
	// (PLEO_PROXY_MAX_CLIENT_CONNS); a connection beyond it waits, and idle keep-alive
	// connections are closed to make room for it.
	MaxClientConns int
	// CacheSize is how many credentials the LRU cache holds (PLEO_PROXY_CACHE_SIZE); more than 0.
	CacheSize int
	// MemoryLimit is the Go runtime's soft memory limit (PLEO_PROXY_MEMORY_LIMIT).
	MemoryLimit MemoryLimit
	// AdminToken is the bearer token for the admin /credentials endpoint
	// (PLEO_PROXY_ADMIN_TOKEN or _FILE); empty turns that endpoint off.
	AdminToken credentials.Secret
	// EventsURL receives a signed JSON event whenever a credential changes state
	// (PLEO_PROXY_EVENTS_URL); nil turns events off.
	EventsURL *url.URL
	// EventsKey signs the events, HMAC-SHA256 (PLEO_PROXY_EVENTS_KEY or _FILE); at least 32
	// bytes, required with EventsURL.
	EventsKey credentials.Secret
	// ClientTokens are the tokens callers present in Proxy-Authorization when the data listener
	// is not on loopback (PLEO_PROXY_CLIENT_TOKENS or _FILE), without duplicates.
	ClientTokens []credentials.Secret
	// LogFormat is "text" or "json" (PLEO_PROXY_LOG_FORMAT).
	LogFormat string
	// LogLevel is the least severe level logged (PLEO_PROXY_LOG_LEVEL).
	LogLevel slog.Level

	// TokenTimeout is how long callers wait for the OAuth token endpoint's answer, and the unit
	// of a refresh's other deadlines (PLEO_PROXY_TOKEN_TIMEOUT; see credentials.BrokerOptions).
	TokenTimeout time.Duration
	// ShutdownTimeout bounds the graceful shutdown (PLEO_PROXY_SHUTDOWN_TIMEOUT).
	ShutdownTimeout time.Duration
	// ShutdownDelay is how long the data listener keeps serving new connections after
	// SIGTERM, readiness already failing, before the drain (PLEO_PROXY_SHUTDOWN_DELAY).
	ShutdownDelay time.Duration
	// StorePollInterval is how often the file store looks for changes made by others
	// (PLEO_PROXY_STORE_POLL_INTERVAL); at most MaxStorePollInterval.
	StorePollInterval time.Duration
	// EnablePprof serves net/http/pprof on the admin listener (PLEO_PROXY_ENABLE_PPROF).
	EnablePprof bool

	// The paths of the secrets given as files (PLEO_PROXY_OAUTH_CLIENT_SECRET_FILE,
	// PLEO_PROXY_ADMIN_TOKEN_FILE, PLEO_PROXY_CLIENT_TOKENS_FILE,
	// PLEO_PROXY_ENCRYPTION_KEY_FILE, PLEO_PROXY_CONNECT_KEY_FILE), empty when the secret is
	// given directly or not at all. The server re-reads them when they change (package
	// secretfile), parsing the new content with ParseOAuthClientSecretFile,
	// ParseAdminTokenFile, ParseClientTokensFile, ParseEncryptionKeyFile and
	// ParseConnectKeyFile.
	OAuthClientSecretFile string
	AdminTokenFile        string
	ClientTokensFile      string
	EncryptionKeyFile     string
	ConnectKeyFile        string
}

// minEventsKeyBytes is the shortest PLEO_PROXY_EVENTS_KEY (events.MinKeyBytes).
const minEventsKeyBytes = 32

// raw is what caarlos0/env reads: every variable as text, static defaults applied. Its env
// tags are also the list of known variables. Parse turns it into a Config, so that every
// problem can name its variable in words of our choosing.
type raw struct {
	Environment           string `env:"ENVIRONMENT" envDefault:"production"`
	UpstreamURL           string `env:"UPSTREAM_URL"`
	ListenAddr            string `env:"LISTEN_ADDR" envDefault:"127.0.0.1:7380"`
	AdminAddr             string `env:"ADMIN_ADDR" envDefault:":7381"`
	Store                 string `env:"STORE" envDefault:"file:///var/lib/pleo-auth-proxy/credentials.json"`
	EncryptionKey         string `env:"ENCRYPTION_KEY"`
	EncryptionKeyFile     string `env:"ENCRYPTION_KEY_FILE"`
	OAuthClientID         string `env:"OAUTH_CLIENT_ID"`
	OAuthClientSecret     string `env:"OAUTH_CLIENT_SECRET"`
	OAuthClientSecretFile string `env:"OAUTH_CLIENT_SECRET_FILE"`
	OAuthTokenURL         string `env:"OAUTH_TOKEN_URL"`
	OAuthAuthorizeURL     string `env:"OAUTH_AUTHORIZE_URL"`
	OAuthScopes           string `env:"OAUTH_SCOPES"`
	OAuthRedirectURL      string `env:"OAUTH_REDIRECT_URL"`
	ConnectAddr           string `env:"CONNECT_ADDR"`
	ConnectSuccessURL     string `env:"CONNECT_SUCCESS_URL"`
	ConnectKey            string `env:"CONNECT_KEY"`
	ConnectKeyFile        string `env:"CONNECT_KEY_FILE"`
	ConnectUnsignedLinks  string `env:"CONNECT_UNSIGNED_LINKS" envDefault:"false"`
	KeepaliveInterval     string `env:"KEEPALIVE_INTERVAL" envDefault:"24h"`
	CompanyHeader         string `env:"COMPANY_HEADER" envDefault:"X-Pleo-Company-Id"`
	TenantHeader          string `env:"TENANT_HEADER" envDefault:"X-Tenant-Id"`
	DefaultCompanyID      string `env:"DEFAULT_COMPANY_ID"`
	RefreshBefore         string `env:"REFRESH_BEFORE" envDefault:"60s"`
	MaxReplayBytes        string `env:"MAX_REPLAY_BYTES" envDefault:"1048576"`
	UpstreamTimeout       string `env:"UPSTREAM_TIMEOUT" envDefault:"30s"`
	UpstreamMaxConns      string `env:"UPSTREAM_MAX_CONNS" envDefault:"256"`
	MaxClientConns        string `env:"MAX_CLIENT_CONNS" envDefault:"256"`
	CacheSize             string `env:"CACHE_SIZE" envDefault:"10000"`
	MemoryLimit           string `env:"MEMORY_LIMIT" envDefault:"auto"`
	AdminToken            string `env:"ADMIN_TOKEN"`
	AdminTokenFile        string `env:"ADMIN_TOKEN_FILE"`
	ClientTokens          string `env:"CLIENT_TOKENS"`
	EventsURL             string `env:"EVENTS_URL"`
	EventsKey             string `env:"EVENTS_KEY"`
	EventsKeyFile         string `env:"EVENTS_KEY_FILE"`
	ClientTokensFile      string `env:"CLIENT_TOKENS_FILE"`
	LogFormat             string `env:"LOG_FORMAT" envDefault:"text"`
	LogLevel              string `env:"LOG_LEVEL" envDefault:"info"`
	TokenTimeout          string `env:"TOKEN_TIMEOUT" envDefault:"10s"`
	ShutdownTimeout       string `env:"SHUTDOWN_TIMEOUT" envDefault:"20s"`
	ShutdownDelay         string `env:"SHUTDOWN_DELAY" envDefault:"0s"`
	StorePollInterval     string `env:"STORE_POLL_INTERVAL" envDefault:"2s"`
	EnablePprof           string `env:"ENABLE_PPROF" envDefault:"false"`
}

// variableNames lists every full variable name raw declares, in declaration order.
var variableNames = sync.OnceValue(func() []string {
	params, err := env.GetFieldParamsWithOptions(&raw{}, env.Options{Environment: map[string]string{}, Prefix: Prefix})
	if err != nil {
		panic("config: bad env tags: " + err.Error())
	}
	names := make([]string, len(params))
	for i, p := range params {
		names[i] = p.Key
	}
	return names
})

// knownVariables ranks each known variable from 1, in declaration order.
var knownVariables = sync.OnceValue(func() map[string]int {
	known := map[string]int{}
	for i, name := range variableNames() {
		known[name] = i + 1
	}
	return known
})

// Variables returns the name of every variable Parse reads, sorted.
func Variables() []string {
	return slices.Sorted(slices.Values(variableNames()))
}

// Problem is one thing wrong with one variable.
type Problem struct {
	// Variable is the full name of the variable at fault, e.g. PLEO_PROXY_REFRESH_BEFORE.
	Variable string
	// Message says what is wrong; it never holds a secret.
	Message string
	// Err is the underlying error, if any (for errors.Is, e.g. fs.ErrNotExist).
	Err error
}

// Error is "VARIABLE: message".
func (p Problem) Error() string { return p.Variable + ": " + p.Message }

// Unwrap returns the underlying error, if any.
func (p Problem) Unwrap() error { return p.Err }

// Errors is every problem Parse found, in the order of the contract's table (unknown variables
// first). Parse returns it as *Errors.
type Errors []Problem

// Error is one line per problem, each starting with the variable's full name.
func (e *Errors) Error() string {
	lines := make([]string, len(*e))
	for i, p := range *e {
		lines[i] = p.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap returns each Problem, so errors.Is and errors.As see their underlying errors.
func (e *Errors) Unwrap() []error {
	errs := make([]error, len(*e))
	for i, p := range *e {
		errs[i] = p
	}
	return errs
}

// parser collects problems while it converts raw into a Config.
type parser struct {
	env  map[string]string
	errs Errors
}

// add records a problem with the variable PLEO_PROXY_<name>.
func (p *parser) add(name string, err error, format string, args ...any) {
	p.errs = append(p.errs, Problem{Variable: Prefix + name, Message: fmt.Sprintf(format, args...), Err: err})
}

// setButEmpty reports whether PLEO_PROXY_<name> is present with an empty value.
func (p *parser) setButEmpty(name string) bool {
	v, ok := p.env[Prefix+name]
	return ok && v == ""
}

// Parse reads the configuration from environ (variable name to value; nil is an empty
// environment, never the process's). On any problem it returns a nil Config and an *Errors
// listing them all.
func Parse(environ map[string]string) (*Config, error) {
	if environ == nil {
		environ = map[string]string{} // caarlos0/env would read the process environment
	}
	r, err := env.ParseAsWithOptions[raw](env.Options{Environment: environ, Prefix: Prefix})
	if err != nil { // every field is a string: this cannot fail, but say so if it does
		return nil, fmt.Errorf("config: %w", err)
	}
	p := &parser{env: environ}
	p.unknown()
	p.rejectSetButEmpty()
	c := &Config{}
	p.upstreamAndOAuth(c, &r)
	p.listeners(c, &r)
	p.storeAndEncryption(c, &r)
	p.consentFlow(c, &r)
	p.limitsAndTimeouts(c, &r)
	p.accessTokens(c, &r)
	p.events(c, &r)
	p.logging(c, &r)
	p.acrossVariables(c)
	return p.result(c)
}

// rejectSetButEmpty refuses the variables whose set-but-empty value caarlos0/env would
// replace with the default: for these that would silently send traffic or credentials
// somewhere the operator did not choose.
func (p *parser) rejectSetButEmpty() {
	for _, name := range []string{"ENVIRONMENT", "UPSTREAM_URL", "LISTEN_ADDR", "ADMIN_ADDR", "STORE",
		"OAUTH_TOKEN_URL", "OAUTH_AUTHORIZE_URL", "COMPANY_HEADER", "TENANT_HEADER"} {
		if p.setButEmpty(name) {
			p.add(name, nil, "is set but empty; unset it to use the default")
		}
	}
}

// upstreamAndOAuth reads the Pleo environment, the upstream URL and the OAuth client: its
// id and secret, its endpoints (defaulting to the environment's) and the scopes to ask for.
func (p *parser) upstreamAndOAuth(c *Config, r *raw) {
	c.Environment = strings.ToLower(r.Environment)
	defaults, ok := defaultEndpoints[c.Environment]
	if !ok {
		p.add("ENVIRONMENT", nil, "%q is not %s or %s", r.Environment, Production, Staging)
	}
	c.UpstreamURL = p.url("UPSTREAM_URL", r.UpstreamURL, defaults.upstream, false)
	c.OAuthClientSecretFile = r.OAuthClientSecretFile
	c.OAuthClientID = r.OAuthClientID
	c.OAuthClientSecret = credentials.Secret(p.secret("OAUTH_CLIENT_SECRET"))
	c.OAuthTokenURL = p.url("OAUTH_TOKEN_URL", r.OAuthTokenURL, defaults.token, false)
	c.OAuthAuthorizeURL = p.url("OAUTH_AUTHORIZE_URL", r.OAuthAuthorizeURL, defaults.authorize, false)
	c.OAuthScopes = p.scopes("OAUTH_SCOPES", r.OAuthScopes)
	c.OAuthRedirectURL = p.url("OAUTH_REDIRECT_URL", r.OAuthRedirectURL, "", true)
}

// listeners reads the data and admin listeners' addresses and how the data listener picks
// the company of a request: its headers and the default company.
func (p *parser) listeners(c *Config, r *raw) {
	c.ListenAddr = p.hostPort("LISTEN_ADDR", r.ListenAddr)
	c.AdminAddr = p.hostPort("ADMIN_ADDR", r.AdminAddr)
	c.CompanyHeader = p.header("COMPANY_HEADER", r.CompanyHeader)
	c.TenantHeader = p.header("TENANT_HEADER", r.TenantHeader)
	if c.CompanyHeader != "" && c.CompanyHeader == c.TenantHeader {
		p.add("TENANT_HEADER", nil, "%q is also %sCOMPANY_HEADER; the two must differ", r.TenantHeader, Prefix)
	}
	if r.DefaultCompanyID != "" {
		if credentials.ValidCompanyID(r.DefaultCompanyID) {
			c.DefaultCompanyID = credentials.CanonicalCompanyID(r.DefaultCompanyID)
		} else {
			p.add("DEFAULT_COMPANY_ID", nil, "%q is not a company id (a UUID such as 5a1c3b2e-0d4f-4e6a-9b8c-7d6e5f4a3b2c)", r.DefaultCompanyID)
		}
	}
}

// storeAndEncryption reads the credential store's URL, its encryption keys and how often
// the store is polled for changes made by others.
func (p *parser) storeAndEncryption(c *Config, r *raw) {
	c.Store = p.store("STORE", r.Store)
	c.EncryptionKeys = p.encryptionKeys("ENCRYPTION_KEY")
	c.EncryptionKeyFile = r.EncryptionKeyFile
	c.StorePollInterval = p.duration("STORE_POLL_INTERVAL", r.StorePollInterval, false)
	if c.StorePollInterval > MaxStorePollInterval {
		p.add("STORE_POLL_INTERVAL", nil, "%q is more than %s (changes by others must be picked up within %s)",
			r.StorePollInterval, MaxStorePollInterval, MaxStorePollInterval)
	}
}

// consentFlow reads the connect listener (the consent flow; off when unset), its success
// page and the keys that sign connect links.
func (p *parser) consentFlow(c *Config, r *raw) {
	c.ConnectSuccessURL = p.url("CONNECT_SUCCESS_URL", r.ConnectSuccessURL, "", true)
	if r.ConnectAddr != "" {
		c.ConnectAddr = p.hostPort("CONNECT_ADDR", r.ConnectAddr)
	}
	c.ConnectKeyFile = r.ConnectKeyFile
	c.ConnectKeys = p.connectKeys("CONNECT_KEY")
	if b, err := strconv.ParseBool(r.ConnectUnsignedLinks); err == nil {
		c.ConnectUnsignedLinks = b
	} else {
		p.add("CONNECT_UNSIGNED_LINKS", nil, "%q is not true or false", r.ConnectUnsignedLinks)
	}
}

// limitsAndTimeouts reads the refresh timing, the bounds on bodies, connections, the cache
// and memory, and the timeouts of calls and of shutdown.
func (p *parser) limitsAndTimeouts(c *Config, r *raw) {
	c.KeepaliveInterval = p.duration("KEEPALIVE_INTERVAL", r.KeepaliveInterval, false)
	c.RefreshBefore = p.duration("REFRESH_BEFORE", r.RefreshBefore, true)
	c.MaxReplayBytes = p.integer("MAX_REPLAY_BYTES", r.MaxReplayBytes, 0)
	c.UpstreamTimeout = p.duration("UPSTREAM_TIMEOUT", r.UpstreamTimeout, false)
	c.UpstreamMaxConns = int(p.integer("UPSTREAM_MAX_CONNS", r.UpstreamMaxConns, 1))
	c.MaxClientConns = int(p.integer("MAX_CLIENT_CONNS", r.MaxClientConns, 1))
	c.CacheSize = int(p.integer("CACHE_SIZE", r.CacheSize, 1))
	c.MemoryLimit = p.memoryLimit("MEMORY_LIMIT", r.MemoryLimit)
	c.TokenTimeout = p.duration("TOKEN_TIMEOUT", r.TokenTimeout, false)
	c.ShutdownTimeout = p.duration("SHUTDOWN_TIMEOUT", r.ShutdownTimeout, false)
	c.ShutdownDelay = p.duration("SHUTDOWN_DELAY", r.ShutdownDelay, true)
}

// accessTokens reads the secrets that callers present: the admin token and the data
// listener's client tokens (each inline or from a file).
func (p *parser) accessTokens(c *Config, r *raw) {
	c.AdminTokenFile = r.AdminTokenFile
	c.AdminToken = credentials.Secret(p.secret("ADMIN_TOKEN"))
	if !c.AdminToken.IsZero() && !isVisibleASCII(c.AdminToken.Reveal()) {
		p.add("ADMIN_TOKEN", nil, "contains a space or a character that cannot appear in an HTTP header")
	}
	c.ClientTokensFile = r.ClientTokensFile
	c.ClientTokens = p.clientTokens("CLIENT_TOKENS")
}

// events reads where credential events are sent (off when unset) and the key that signs
// them, required with the URL.
func (p *parser) events(c *Config, r *raw) {
	c.EventsURL = p.url("EVENTS_URL", r.EventsURL, "", false)
	c.EventsKey = credentials.Secret(p.secret("EVENTS_KEY"))
	if r.EventsURL != "" && len(c.EventsKey.Reveal()) < minEventsKeyBytes {
		p.add("EVENTS_KEY", nil, "must be set (or %sEVENTS_KEY_FILE) to a key of at least %d bytes when %sEVENTS_URL is set: it signs the events",
			Prefix, minEventsKeyBytes, Prefix)
	}
}

// logging reads the log format and level, and whether the admin listener serves pprof.
func (p *parser) logging(c *Config, r *raw) {
	switch f := strings.ToLower(r.LogFormat); f {
	case LogFormatText, LogFormatJSON:
		c.LogFormat = f
	default:
		p.add("LOG_FORMAT", nil, "%q is not %s or %s", r.LogFormat, LogFormatText, LogFormatJSON)
	}
	c.LogLevel = p.logLevel("LOG_LEVEL", r.LogLevel)
	if b, err := strconv.ParseBool(r.EnablePprof); err == nil {
		c.EnablePprof = b
	} else {
		p.add("ENABLE_PPROF", nil, "%q is not true or false", r.EnablePprof)
	}
}

// acrossVariables applies the rules that join variables of different sections, once every
// section is read: a variable that already has a problem is not blamed again.
func (p *parser) acrossVariables(c *Config) {
	if c.ConnectAddr != "" {
		for name, missing := range map[string]bool{
			"OAUTH_CLIENT_ID":     c.OAuthClientID == "",
			"OAUTH_CLIENT_SECRET": c.OAuthClientSecret.IsZero(),
			"OAUTH_REDIRECT_URL":  c.OAuthRedirectURL == nil,
		} {
			if missing && !p.hasProblem(name) {
				p.add(name, nil, "is required when %sCONNECT_ADDR is set (the consent flow)", Prefix)
			}
		}
	}
	if c.ConnectAddr != "" && len(c.ConnectKeys) == 0 && len(c.EncryptionKeys) == 0 && !c.ConnectUnsignedLinks &&
		!p.hasProblem("CONNECT_KEY") && !p.hasProblem("ENCRYPTION_KEY") && !p.hasProblem("CONNECT_UNSIGNED_LINKS") {
		p.add("CONNECT_KEY", nil, "is required when %sCONNECT_ADDR is set: connect links are signed with it "+
			"(make one with: openssl rand -base64 32; or set %sENCRYPTION_KEY to derive it from, or "+
			"%sCONNECT_UNSIGNED_LINKS=true if your ingress authorises /connect itself)", Prefix, Prefix, Prefix)
	}
	if c.OAuthClientID != "" && c.OAuthClientSecret.IsZero() && !p.hasProblem("OAUTH_CLIENT_SECRET") {
		p.add("OAUTH_CLIENT_SECRET", nil, "is required when %sOAUTH_CLIENT_ID is set", Prefix)
	}
	if c.OAuthClientID == "" && !c.OAuthClientSecret.IsZero() && !p.hasProblem("OAUTH_CLIENT_ID") {
		p.add("OAUTH_CLIENT_ID", nil, "is required when %sOAUTH_CLIENT_SECRET is set", Prefix)
	}
	if c.ListenAddr != "" && !c.ListenIsLoopback() && len(c.ClientTokens) == 0 && !p.hasProblem("CLIENT_TOKENS") {
		p.add("CLIENT_TOKENS", nil, "at least one client token is required because %sLISTEN_ADDR %q is not a loopback address",
			Prefix, c.ListenAddr)
	}
}

// result returns c, or, if any section found a problem, every problem in the order of the
// contract's table (each variable's own in the order found).
func (p *parser) result(c *Config) (*Config, error) {
	if len(p.errs) > 0 {
		// Map iteration is unordered: keep each variable's problems in table order.
		rank := knownVariables()
		slices.SortStableFunc(p.errs, func(a, b Problem) int { return rank[a.Variable] - rank[b.Variable] })
		errs := p.errs
		return nil, &errs
	}
	return c, nil
}

// hasProblem reports whether PLEO_PROXY_<name> or its _FILE variant already has a problem.
func (p *parser) hasProblem(name string) bool {
	return slices.ContainsFunc(p.errs, func(e Problem) bool {
		return e.Variable == Prefix+name || e.Variable == Prefix+name+"_FILE"
	})
}

// k8sServiceLink matches the variables Kubernetes injects for a Service named pleo-proxy
// (enableServiceLinks), which are not ours and must not stop the sidecar.
var k8sServiceLink = regexp.MustCompile(`^PLEO_PROXY_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_[0-9]+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?)$`)

// unknown reports every PLEO_PROXY_ variable that Parse does not read: a typo must not pass
// silently.
func (p *parser) unknown() {
	known := knownVariables()
	var names []string
	for name := range p.env {
		if strings.HasPrefix(name, Prefix) && known[name] == 0 && !k8sServiceLink.MatchString(name) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		msg := "is not a variable this sidecar reads"
		if s := suggest(name, known); s != "" {
			msg += "; did you mean " + s + "?"
		}
		p.errs = append(p.errs, Problem{Variable: name, Message: msg})
	}
}

// suggest returns the known name closest to name, if it is close enough to be a typo.
func suggest(name string, known map[string]int) string {
	best, bestDist := "", 4
	for k := range known {
		if d := editDistance(name, k); d < bestDist || d == bestDist && k < best {
			best, bestDist = k, d
		}
	}
	if bestDist > 3 {
		return ""
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// url parses an absolute http(s) URL with a host and without user info, query or fragment.
// An empty value yields def parsed (nil when def is empty). redirect applies the OAuth
// redirect rule: https unless the host is loopback.
func (p *parser) url(name, value, def string, redirect bool) *url.URL {
	if value == "" {
		if def == "" {
			return nil
		}
		u, _ := url.Parse(def)
		return u
	}
	u, err := url.Parse(value)
	switch {
	case err != nil:
		p.add(name, nil, "is not a URL")
		return nil
	case u.User != nil:
		p.add(name, nil, "must not contain user information")
		return nil
	case u.Scheme != "http" && u.Scheme != "https" || u.Opaque != "":
		p.add(name, nil, "%q is not an absolute http:// or https:// URL", value)
		return nil
	case u.Hostname() == "":
		p.add(name, nil, "%q has no host", value)
		return nil
	case u.RawQuery != "" || u.ForceQuery || strings.Contains(value, "#"):
		p.add(name, nil, "must not have a query or a fragment") // a query may hold a secret: not quoted
		return nil
	}
	if port := u.Port(); port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			p.add(name, nil, "%q has a bad port", value)
			return nil
		}
	}
	if redirect && u.Scheme != "https" && !isLoopbackHost(u.Hostname()) {
		p.add(name, nil, "%q must use https (http is allowed only for localhost, 127.0.0.1 and ::1)", value)
		return nil
	}
	return u
}

// hostPort checks a listen address: host:port, the host possibly empty, the port a number.
func (p *parser) hostPort(name, value string) string {
	if value == "" {
		return "" // reported as set-but-empty, or optional
	}
	host, port, err := net.SplitHostPort(value)
	if err != nil {
		p.add(name, nil, "%q is not host:port (e.g. 127.0.0.1:7380 or :7380)", value)
		return ""
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		p.add(name, nil, "%q does not have a port number (0 to 65535)", value)
		return ""
	}
	if strings.ContainsAny(host, " /") {
		p.add(name, nil, "%q does not have a valid host", value)
		return ""
	}
	return value
}

// store checks PLEO_PROXY_STORE's scheme and shape.
func (p *parser) store(name, value string) string {
	if value == "" {
		return ""
	}
	switch {
	case value == "memory://":
		return value
	case strings.HasPrefix(value, "file://"):
		u, err := url.Parse(value)
		if err != nil || u.Host != "" && u.Host != "localhost" || !strings.HasPrefix(u.Path, "/") || u.Path == "/" ||
			u.RawQuery != "" || u.ForceQuery || strings.Contains(value, "#") || u.User != nil {
			p.add(name, nil, "%q is not a file URL with an absolute path, e.g. file:///var/lib/pleo-auth-proxy/credentials.json", value)
			return ""
		}
		return value
	case strings.HasPrefix(value, "postgres://"), strings.HasPrefix(value, "postgresql://"):
		if _, err := url.Parse(value); err != nil {
			p.add(name, nil, "is not a valid postgres URL")
			return ""
		}
		return value
	}
	p.add(name, nil, "%q must start with file://, postgres://, postgresql:// or be memory://", redactURL(value))
	return ""
}

// RedactedStore is Store with any password masked, for logs.
func (c *Config) RedactedStore() string { return redactURL(c.Store) }

// redactURL masks a URL's password, in user info or in a query parameter (libpq's password
// and sslpassword). A value that does not parse is masked whole if it might hold one.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		if strings.ContainsAny(s, "@?") {
			return "[unparsable URL]"
		}
		return s
	}
	q := u.Query()
	changed := false
	for k := range q {
		if strings.Contains(strings.ToLower(k), "password") {
			q.Set(k, "xxxxx")
			changed = true
		}
	}
	if _, hasPassword := u.User.Password(); !hasPassword && !changed {
		return s // unchanged, so memory:// keeps its slashes
	}
	if changed {
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

// secret reads PLEO_PROXY_<name> or PLEO_PROXY_<name>_FILE (not both), trailing white space
// trimmed.
func (p *parser) secret(name string) string {
	value := p.env[Prefix+name]
	file := p.env[Prefix+name+"_FILE"]
	if value != "" && file != "" {
		p.add(name, nil, "is set and so is %s%s_FILE; set one of them", Prefix, name)
		return ""
	}
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			p.add(name+"_FILE", err, "cannot read %q: %v", file, errors.Unwrap(err))
			return ""
		}
		s := strings.TrimRight(string(b), " \t\r\n")
		if s == "" {
			p.add(name+"_FILE", nil, "file %q is empty", file)
		}
		return s
	}
	return strings.TrimRight(value, " \t\r\n")
}

// encryptionKeys reads the comma- (or, in the file, newline-) separated base64 keys.
func (p *parser) encryptionKeys(name string) [][]byte {
	// A forgotten secret must not silently turn encryption off.
	return p.keyList(name, "unset it to store credentials unencrypted", func(k []byte) string {
		if len(k) != EncryptionKeySize {
			return fmt.Sprintf("decodes to %d bytes, want %d", len(k), EncryptionKeySize)
		}
		return ""
	})
}

// keyList reads a list of standard base64 keys from name or name_FILE (separated by commas or
// newlines, newest first), each checked by bad (which says what is wrong, or ""). A variable
// set but empty is an error whose remedy is ifEmpty; so is one holding no key, or any bad key:
// then no key is returned.
func (p *parser) keyList(name, ifEmpty string, bad func([]byte) string) [][]byte {
	for _, n := range []string{name, name + "_FILE"} {
		if p.setButEmpty(n) {
			p.add(n, nil, "is set but empty; %s", ifEmpty)
			return nil
		}
	}
	text := p.secret(name)
	blame := name
	if p.env[Prefix+name] == "" {
		blame = name + "_FILE"
	}
	if text == "" {
		if p.env[Prefix+blame] != "" && !p.hasProblem(name) {
			p.add(blame, nil, "holds no key") // white space only: not silently no key
		}
		return nil
	}
	parts := splitList(text, ",\n")
	if len(parts) == 0 {
		p.add(blame, nil, "holds no key")
		return nil
	}
	keys := make([][]byte, 0, len(parts))
	for i, part := range parts {
		which := "the key"
		if len(parts) > 1 {
			which = fmt.Sprintf("key %d of %d", i+1, len(parts))
		}
		k, err := base64.StdEncoding.DecodeString(part)
		if err != nil {
			p.add(blame, nil, "%s is not standard base64 (make one with: openssl rand -base64 32)", which)
			continue
		}
		if msg := bad(k); msg != "" {
			p.add(blame, nil, "%s %s (make one with: openssl rand -base64 32)", which, msg)
			continue
		}
		keys = append(keys, k)
	}
	if len(keys) != len(parts) {
		return nil
	}
	return keys
}

// clientTokens reads PLEO_PROXY_CLIENT_TOKENS (comma-separated) or its _FILE (comma- or
// newline-separated).
func (p *parser) clientTokens(name string) []credentials.Secret {
	text := p.secret(name)
	if text == "" {
		return nil
	}
	blame := name
	if p.env[Prefix+name] == "" {
		blame = name + "_FILE"
	}
	var tokens []credentials.Secret
	for i, t := range splitList(text, ",\n") {
		if !isVisibleASCII(t) {
			p.add(blame, nil, "token %d contains a space or a character that cannot appear in an HTTP header", i+1)
			return nil
		}
		if !slices.Contains(tokens, credentials.Secret(t)) {
			tokens = append(tokens, credentials.Secret(t))
		}
	}
	if len(tokens) == 0 {
		p.add(blame, nil, "holds no token")
	}
	return tokens
}

// splitList splits s at any of seps, trims white space around each item and drops empty ones.
func splitList(s, seps string) []string {
	var out []string
	for _, item := range strings.FieldsFunc(s, func(r rune) bool { return strings.ContainsRune(seps, r) }) {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// isVisibleASCII reports whether s is non-empty printable ASCII without spaces (RFC 9110 VCHAR).
func isVisibleASCII(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// scopes splits OAuth scopes at spaces or commas, dropping duplicates.
func (p *parser) scopes(name, value string) []string {
	var scopes []string
	for _, s := range splitList(value, ", \t\n") {
		// RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
		if !isVisibleASCII(s) || strings.ContainsAny(s, `"\`) {
			p.add(name, nil, "%q is not a valid OAuth scope", s)
			return nil
		}
		if !slices.Contains(scopes, s) {
			scopes = append(scopes, s)
		}
	}
	return scopes
}

// duration parses a Go duration that must be more than zero (or zero or more with zeroOK).
func (p *parser) duration(name, value string, zeroOK bool) time.Duration {
	d, err := time.ParseDuration(value)
	switch {
	case err != nil:
		p.add(name, nil, "%q is not a duration (a number with a unit, e.g. 30s, 5m, 24h)", value)
		return 0
	case d < 0 || d == 0 && !zeroOK:
		if zeroOK {
			p.add(name, nil, "%q must be 0 or more", value)
		} else {
			p.add(name, nil, "%q must be more than 0", value)
		}
		return 0
	}
	return d
}

// integer parses a base-10 integer of at least least.
func (p *parser) integer(name, value string, least int64) int64 {
	n, err := strconv.ParseInt(value, 10, 64)
	if err != nil || int64(int(n)) != n {
		p.add(name, nil, "%q is not a whole number", value)
		return 0
	}
	if n < least {
		p.add(name, nil, "%q must be %d or more", value, least)
		return 0
	}
	return n
}

// logLevel parses debug, info, warn or error, in any case.
func (p *parser) logLevel(name, value string) slog.Level {
	switch strings.ToLower(value) {
	case "debug":
		return slog.LevelDebug
	case "info":
		return slog.LevelInfo
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	p.add(name, nil, "%q is not debug, info, warn or error", value)
	return slog.LevelInfo
}

// reservedHeaders may not select a company: the proxy sets, strips or relies on them.
var reservedHeaders = []string{"Authorization", "Proxy-Authorization", "Host", "Connection", "Content-Length",
	"Content-Type", "Cookie", "Transfer-Encoding", "Upgrade", "X-Request-Id"}

// header checks a selection header's name and returns it in canonical form.
func (p *parser) header(name, value string) string {
	if value == "" {
		return ""
	}
	if !isToken(value) {
		p.add(name, nil, "%q is not a valid HTTP header name", value)
		return ""
	}
	canonical := http.CanonicalHeaderKey(value)
	for _, r := range reservedHeaders {
		if strings.EqualFold(value, r) {
			p.add(name, nil, "%q cannot be used to select a company", value)
			return ""
		}
	}
	return canonical
}

// isToken reports whether s is an RFC 9110 token, the syntax of a header field name.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// ListenIsLoopback reports whether the data listener's host is a loopback address
// (127.0.0.0/8, ::1 or "localhost"). An empty host (":7380") listens everywhere: not loopback.
func (c *Config) ListenIsLoopback() bool {
	host, _, err := net.SplitHostPort(c.ListenAddr)
	return err == nil && isLoopbackHost(host)
}

// isLoopbackHost reports whether host is "localhost" or a loopback IP address.
func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	addr, err := netip.ParseAddr(host)
	return err == nil && addr.Unmap().IsLoopback()
}

// summary is what a Config shows when printed: no secret, only whether one is set.
func (c Config) summary() []slog.Attr {
	urlString := func(u *url.URL) string {
		if u == nil {
			return ""
		}
		return u.Redacted()
	}
	return []slog.Attr{
		slog.String("environment", c.Environment),
		slog.String("upstream_url", urlString(c.UpstreamURL)),
		slog.String("listen_addr", c.ListenAddr),
		slog.String("admin_addr", c.AdminAddr),
		slog.String("store", redactURL(c.Store)),
		slog.Int("encryption_keys", len(c.EncryptionKeys)),
		slog.String("oauth_client_id", c.OAuthClientID),
		slog.Bool("oauth_client_secret_set", !c.OAuthClientSecret.IsZero()),
		slog.String("oauth_token_url", urlString(c.OAuthTokenURL)),
		slog.String("oauth_authorize_url", urlString(c.OAuthAuthorizeURL)),
		slog.String("oauth_scopes", strings.Join(c.OAuthScopes, " ")),
		slog.String("oauth_redirect_url", urlString(c.OAuthRedirectURL)),
		slog.String("connect_addr", c.ConnectAddr),
		slog.String("connect_success_url", urlString(c.ConnectSuccessURL)),
		slog.Int("connect_keys", len(c.ConnectKeys)),
		slog.Bool("connect_unsigned_links", c.ConnectUnsignedLinks),
		slog.String("keepalive_interval", c.KeepaliveInterval.String()),
		slog.String("company_header", c.CompanyHeader),
		slog.String("tenant_header", c.TenantHeader),
		slog.String("default_company_id", c.DefaultCompanyID),
		slog.String("refresh_before", c.RefreshBefore.String()),
		slog.Int64("max_replay_bytes", c.MaxReplayBytes),
		slog.String("upstream_timeout", c.UpstreamTimeout.String()),
		slog.Int("upstream_max_conns", c.UpstreamMaxConns),
		slog.Int("cache_size", c.CacheSize),
		slog.String("memory_limit", c.MemoryLimit.String()),
		slog.Bool("admin_token_set", !c.AdminToken.IsZero()),
		slog.Int("client_tokens", len(c.ClientTokens)),
		slog.String("log_format", c.LogFormat),
		slog.String("log_level", strings.ToLower(c.LogLevel.String())),
		slog.String("token_timeout", c.TokenTimeout.String()),
		slog.String("shutdown_timeout", c.ShutdownTimeout.String()),
		slog.String("shutdown_delay", c.ShutdownDelay.String()),
		slog.String("store_poll_interval", c.StorePollInterval.String()),
		slog.Bool("enable_pprof", c.EnablePprof),
	}
}

// LogValue shows the non-secret fields for log/slog: secrets appear only as whether they are
// set, keys and client tokens as counts, Store with its password masked. It has a value
// receiver so that a Config logged by value is covered too.
func (c Config) LogValue() slog.Value { return slog.GroupValue(c.summary()...) }

// Format prints the same view as LogValue for every fmt verb (%v, %+v, %#v, %s, …), so that
// no verb can reach the encryption keys or a password in Store.
func (c Config) Format(f fmt.State, _ rune) {
	var b strings.Builder
	b.WriteString("config.Config{")
	for i, a := range c.summary() {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(a.Key)
		b.WriteByte('=')
		if a.Value.Kind() == slog.KindString {
			b.WriteString(strconv.Quote(a.Value.String()))
		} else {
			b.WriteString(a.Value.String())
		}
	}
	b.WriteByte('}')
	_, _ = f.Write([]byte(b.String()))
}

// MarshalJSON encodes the same view as LogValue, as an object in field order.
func (c Config) MarshalJSON() ([]byte, error) {
	b := []byte{'{'}
	for i, a := range c.summary() {
		if i > 0 {
			b = append(b, ',')
		}
		k, _ := json.Marshal(a.Key)
		v, err := json.Marshal(a.Value.Any())
		if err != nil {
			return nil, err
		}
		b = append(append(append(b, k...), ':'), v...)
	}
	return append(b, '}'), nil
}

// Environ turns os.Environ's "KEY=value" list into a map. As with os.Getenv, the first of
// duplicate keys wins; entries without "=" are skipped.
func Environ(kv []string) map[string]string {
	m := make(map[string]string, len(kv))
	for _, s := range kv {
		k, v, ok := strings.Cut(s, "=")
		if !ok || k == "" {
			continue
		}
		if _, dup := m[k]; !dup {
			m[k] = v
		}
	}
	return m
}

// LoadEnvFile reads the dotenv file at path and returns its variables merged with environ,
// environ winning where both set one. A syntax error names the file and line; it never
// quotes the file's content, which may hold secrets.
func LoadEnvFile(path string, environ map[string]string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: env file: %w", err)
	}
	fromFile, err := godotenv.UnmarshalBytes(data)
	if err != nil {
		return nil, fmt.Errorf("config: env file %s:%d: %s", path, errorLine(data), describeDotenvError(err))
	}
	merged := make(map[string]string, len(fromFile)+len(environ))
	maps.Copy(merged, fromFile)
	maps.Copy(merged, environ)
	return merged, nil
}

// errorLine finds the line of a dotenv syntax error: the line after the longest run of whole
// lines that parses (a quoted value may span lines, so a shorter prefix can fail where a longer
// one succeeds).
func errorLine(data []byte) int {
	text := strings.ReplaceAll(string(data), "\r\n", "\n")
	lines := strings.SplitAfter(text, "\n")
	good, prefix := 0, ""
	for i, l := range lines {
		prefix += l
		if _, err := godotenv.Unmarshal(prefix); err == nil {
			good = i + 1
		}
	}
	return good + 1
}

// describeDotenvError restates a godotenv error without the file content it quotes.
func describeDotenvError(err error) string {
	switch msg := err.Error(); {
	case strings.HasPrefix(msg, "unterminated quoted value"):
		return "unterminated quoted value"
	case strings.HasPrefix(msg, "unexpected character"), strings.HasPrefix(msg, "zero length string"):
		return "expected NAME=value (a name has letters, digits, _ and .)"
	default:
		return "syntax error"
	}
}
