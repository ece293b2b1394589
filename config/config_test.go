package config

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
)

// key returns the base64 of 32 bytes of b, a valid encryption key.
func key(b byte) string { return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{b}, 32)) }

// mustURL parses a URL written in a test.
func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

// writeFile writes content into a new file under t.TempDir and returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// problems parses environ, insists that it fails with *Errors and returns the lines.
func problems(t *testing.T, environ map[string]string) (*Errors, []string) {
	t.Helper()
	cfg, err := Parse(environ)
	if err == nil {
		t.Fatalf("Parse succeeded, want an error; config: %v", cfg)
	}
	if cfg != nil {
		t.Errorf("Parse returned a config with its error")
	}
	var errs *Errors
	if !errors.As(err, &errs) {
		t.Fatalf("error is %T, want *Errors: %v", err, err)
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != len(*errs) {
		t.Errorf("%d lines for %d problems:\n%v", len(lines), len(*errs), err)
	}
	return errs, lines
}

func defaults(environment, upstream, auth string) *Config {
	return &Config{
		Environment:       environment,
		UpstreamURL:       mustURL(upstream),
		ListenAddr:        "127.0.0.1:7380",
		AdminAddr:         ":7381",
		Store:             "file:///var/lib/pleo-auth-proxy/credentials.json",
		OAuthTokenURL:     mustURL(auth + "/oauth/token"),
		OAuthAuthorizeURL: mustURL(auth + "/oauth/authorize"),
		KeepaliveInterval: 24 * time.Hour,
		CompanyHeader:     "X-Pleo-Company-Id",
		TenantHeader:      "X-Tenant-Id",
		RefreshBefore:     60 * time.Second,
		MaxReplayBytes:    1048576,
		UpstreamTimeout:   30 * time.Second,
		UpstreamMaxConns:  256,
		MaxClientConns:    256,
		CacheSize:         10000,
		MemoryLimit:       MemoryLimit{Auto: true},
		LogFormat:         "text",
		LogLevel:          slog.LevelInfo,
		TokenTimeout:      10 * time.Second,
		ShutdownTimeout:   20 * time.Second,
		StorePollInterval: 2 * time.Second,
	}
}

func TestParseDefaults(t *testing.T) {
	tests := []struct {
		name    string
		environ map[string]string
		want    *Config
	}{
		{"empty environment is production", map[string]string{},
			defaults("production", "https://external.pleo.io", "https://auth.pleo.io")},
		{"nil environment is production", nil,
			defaults("production", "https://external.pleo.io", "https://auth.pleo.io")},
		{"production", map[string]string{"PLEO_PROXY_ENVIRONMENT": "production"},
			defaults("production", "https://external.pleo.io", "https://auth.pleo.io")},
		{"staging", map[string]string{"PLEO_PROXY_ENVIRONMENT": "staging"},
			defaults("staging", "https://external.staging.pleo.io", "https://auth.staging.pleo.io")},
		{"staging in capitals", map[string]string{"PLEO_PROXY_ENVIRONMENT": "STAGING"},
			defaults("staging", "https://external.staging.pleo.io", "https://auth.staging.pleo.io")},
		{"variables without our prefix are ignored", map[string]string{"PATH": "/bin", "PLEO_OTHER": "x", "HOME": ""},
			defaults("production", "https://external.pleo.io", "https://auth.pleo.io")},
		{"optional values set but empty mean unset", map[string]string{
			"PLEO_PROXY_OAUTH_REDIRECT_URL": "", "PLEO_PROXY_CONNECT_ADDR": "", "PLEO_PROXY_DEFAULT_COMPANY_ID": "",
			"PLEO_PROXY_ADMIN_TOKEN": "", "PLEO_PROXY_CLIENT_TOKENS": "", "PLEO_PROXY_OAUTH_SCOPES": "",
			"PLEO_PROXY_REFRESH_BEFORE": "", "PLEO_PROXY_LOG_LEVEL": "", "PLEO_PROXY_ENABLE_PPROF": "",
		}, defaults("production", "https://external.pleo.io", "https://auth.pleo.io")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.environ)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %v\nwant %v", got, tt.want)
			}
			if !got.ListenIsLoopback() {
				t.Errorf("default listener is not loopback")
			}
		})
	}
}

func TestParseValues(t *testing.T) {
	environ := map[string]string{
		"PLEO_PROXY_ENVIRONMENT":         "staging",
		"PLEO_PROXY_UPSTREAM_URL":        "http://127.0.0.1:4000/api/",
		"PLEO_PROXY_LISTEN_ADDR":         "0.0.0.0:8443",
		"PLEO_PROXY_ADMIN_ADDR":          "127.0.0.1:0",
		"PLEO_PROXY_STORE":               "postgres://proxy:pw@db:5432/proxy?sslmode=require",
		"PLEO_PROXY_ENCRYPTION_KEY":      key(2) + ", " + key(1),
		"PLEO_PROXY_OAUTH_CLIENT_ID":     "client-1",
		"PLEO_PROXY_OAUTH_CLIENT_SECRET": "client-secret\n",
		"PLEO_PROXY_OAUTH_TOKEN_URL":     "https://mock.example:8443/token",
		"PLEO_PROXY_OAUTH_AUTHORIZE_URL": "https://mock.example:8443/authorize",
		"PLEO_PROXY_OAUTH_SCOPES":        "users:read, expenses:read expenses:read,,",
		"PLEO_PROXY_OAUTH_REDIRECT_URL":  "http://localhost:7382/callback",
		"PLEO_PROXY_CONNECT_ADDR":        ":7382",
		"PLEO_PROXY_CONNECT_SUCCESS_URL": "https://app.example.com/pleo/connected",
		"PLEO_PROXY_KEEPALIVE_INTERVAL":  "12h",
		"PLEO_PROXY_COMPANY_HEADER":      "x-company",
		"PLEO_PROXY_TENANT_HEADER":       "X-ERP-TENANT",
		"PLEO_PROXY_DEFAULT_COMPANY_ID":  "5A1C3B2E-0D4F-4E6A-9B8C-7D6E5F4A3B2C",
		"PLEO_PROXY_REFRESH_BEFORE":      "0s",
		"PLEO_PROXY_MAX_REPLAY_BYTES":    "0",
		"PLEO_PROXY_UPSTREAM_TIMEOUT":    "1m",
		"PLEO_PROXY_UPSTREAM_MAX_CONNS":  "32",
		"PLEO_PROXY_MAX_CLIENT_CONNS":    "64",
		"PLEO_PROXY_CACHE_SIZE":          "1",
		"PLEO_PROXY_MEMORY_LIMIT":        "56Mi",
		"PLEO_PROXY_ADMIN_TOKEN":         "admin-token",
		"PLEO_PROXY_CLIENT_TOKENS":       "tok-a, tok-b,tok-a,",
		"PLEO_PROXY_LOG_FORMAT":          "JSON",
		"PLEO_PROXY_LOG_LEVEL":           "Debug",
		"PLEO_PROXY_TOKEN_TIMEOUT":       "3s",
		"PLEO_PROXY_SHUTDOWN_TIMEOUT":    "5s",
		"PLEO_PROXY_SHUTDOWN_DELAY":      "7s",
		"PLEO_PROXY_STORE_POLL_INTERVAL": "10s",
		"PLEO_PROXY_ENABLE_PPROF":        "true",
	}
	got, err := Parse(environ)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	want := &Config{
		Environment:       "staging",
		UpstreamURL:       mustURL("http://127.0.0.1:4000/api/"),
		ListenAddr:        "0.0.0.0:8443",
		AdminAddr:         "127.0.0.1:0",
		Store:             "postgres://proxy:pw@db:5432/proxy?sslmode=require",
		EncryptionKeys:    [][]byte{bytes.Repeat([]byte{2}, 32), bytes.Repeat([]byte{1}, 32)},
		OAuthClientID:     "client-1",
		OAuthClientSecret: "client-secret",
		OAuthTokenURL:     mustURL("https://mock.example:8443/token"),
		OAuthAuthorizeURL: mustURL("https://mock.example:8443/authorize"),
		OAuthScopes:       []string{"users:read", "expenses:read"},
		OAuthRedirectURL:  mustURL("http://localhost:7382/callback"),
		ConnectAddr:       ":7382",
		ConnectSuccessURL: mustURL("https://app.example.com/pleo/connected"),
		KeepaliveInterval: 12 * time.Hour,
		CompanyHeader:     "X-Company",
		TenantHeader:      "X-Erp-Tenant",
		DefaultCompanyID:  "5a1c3b2e-0d4f-4e6a-9b8c-7d6e5f4a3b2c",
		RefreshBefore:     0,
		MaxReplayBytes:    0,
		UpstreamTimeout:   time.Minute,
		UpstreamMaxConns:  32,
		MaxClientConns:    64,
		CacheSize:         1,
		MemoryLimit:       MemoryLimit{Bytes: 56 << 20},
		AdminToken:        "admin-token",
		ClientTokens:      []credentials.Secret{"tok-a", "tok-b"},
		LogFormat:         "json",
		LogLevel:          slog.LevelDebug,
		TokenTimeout:      3 * time.Second,
		ShutdownTimeout:   5 * time.Second,
		ShutdownDelay:     7 * time.Second,
		StorePollInterval: 10 * time.Second,
		EnablePprof:       true,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %v\nwant %v", got, want)
		for i, f := range reflect.VisibleFields(reflect.TypeFor[Config]()) {
			if g, w := reflect.ValueOf(*got).Field(i).Interface(), reflect.ValueOf(*want).Field(i).Interface(); !reflect.DeepEqual(g, w) {
				t.Errorf("field %s differs", f.Name)
			}
		}
	}
	if got.ListenIsLoopback() {
		t.Errorf("0.0.0.0 reported as loopback")
	}
	for store, want := range map[string]string{
		"postgres://proxy:pw@db:5432/proxy?sslmode=require":     "postgres://proxy:xxxxx@db:5432/proxy?sslmode=require",
		"postgres://proxy@db/proxy?password=pw&sslmode=require": "postgres://proxy@db/proxy?password=xxxxx&sslmode=require",
		"memory://": "memory://",
		"file:///var/lib/pleo-auth-proxy/credentials.json": "file:///var/lib/pleo-auth-proxy/credentials.json",
	} {
		if got := (&Config{Store: store}).RedactedStore(); got != want {
			t.Errorf("RedactedStore(%q) = %q, want %q", store, got, want)
		}
	}
}

func TestParseStoreSchemes(t *testing.T) {
	for _, store := range []string{
		"file:///var/lib/x/credentials.json", "file://localhost/data/c.json",
		"postgres://db/proxy", "postgresql://u@db:5432/proxy?sslmode=verify-full", "postgres:///proxy?host=/run/pg", "memory://",
	} {
		cfg, err := Parse(map[string]string{"PLEO_PROXY_STORE": store})
		if err != nil {
			t.Errorf("STORE=%q: %v", store, err)
			continue
		}
		if cfg.Store != store {
			t.Errorf("Store = %q, want %q", cfg.Store, store)
		}
	}
}

// TestParseProblems has at least one row per variable: each bad value must be reported on a line
// that starts with the variable's full name.
func TestParseProblems(t *testing.T) {
	unreadable := filepath.Join(t.TempDir(), "missing")
	empty := writeFile(t, "empty", "\n")
	shortKey := base64.StdEncoding.EncodeToString(make([]byte, 16))
	tests := []struct {
		name    string
		environ map[string]string
		wantVar string
		want    string // a substring of that variable's line
	}{
		{"unknown environment", map[string]string{"PLEO_PROXY_ENVIRONMENT": "prod"}, "ENVIRONMENT", `"prod" is not production or staging`},
		{"empty environment", map[string]string{"PLEO_PROXY_ENVIRONMENT": ""}, "ENVIRONMENT", "set but empty"},

		{"upstream not http", map[string]string{"PLEO_PROXY_UPSTREAM_URL": "ftp://external.pleo.io"}, "UPSTREAM_URL", "http"},
		{"upstream relative", map[string]string{"PLEO_PROXY_UPSTREAM_URL": "/v1"}, "UPSTREAM_URL", "absolute"},
		{"upstream no host", map[string]string{"PLEO_PROXY_UPSTREAM_URL": "https:///v1"}, "UPSTREAM_URL", "no host"},
		{"upstream not a URL", map[string]string{"PLEO_PROXY_UPSTREAM_URL": "https://exa mple.com"}, "UPSTREAM_URL", "not a URL"},
		{"upstream user info", map[string]string{"PLEO_PROXY_UPSTREAM_URL": "https://u:hunter2@external.pleo.io"}, "UPSTREAM_URL", "user information"},
		{"upstream query", map[string]string{"PLEO_PROXY_UPSTREAM_URL": "https://external.pleo.io/?a=b"}, "UPSTREAM_URL", "query"},
		{"upstream query not quoted", map[string]string{"PLEO_PROXY_UPSTREAM_URL": "https://external.pleo.io/?token=hunter2"}, "UPSTREAM_URL", "query"},
		{"upstream fragment", map[string]string{"PLEO_PROXY_UPSTREAM_URL": "https://external.pleo.io/#x"}, "UPSTREAM_URL", "fragment"},
		{"upstream bad port", map[string]string{"PLEO_PROXY_UPSTREAM_URL": "https://external.pleo.io:99999"}, "UPSTREAM_URL", "port"},
		{"upstream empty", map[string]string{"PLEO_PROXY_UPSTREAM_URL": ""}, "UPSTREAM_URL", "set but empty"},

		{"listen no port", map[string]string{"PLEO_PROXY_LISTEN_ADDR": "127.0.0.1"}, "LISTEN_ADDR", "host:port"},
		{"listen port too big", map[string]string{"PLEO_PROXY_LISTEN_ADDR": "127.0.0.1:70000"}, "LISTEN_ADDR", "port"},
		{"listen named port", map[string]string{"PLEO_PROXY_LISTEN_ADDR": "127.0.0.1:http"}, "LISTEN_ADDR", "port"},
		{"listen empty", map[string]string{"PLEO_PROXY_LISTEN_ADDR": ""}, "LISTEN_ADDR", "set but empty"},
		{"admin no port", map[string]string{"PLEO_PROXY_ADMIN_ADDR": "7381"}, "ADMIN_ADDR", "host:port"},
		{"admin empty", map[string]string{"PLEO_PROXY_ADMIN_ADDR": ""}, "ADMIN_ADDR", "set but empty"},

		{"store scheme", map[string]string{"PLEO_PROXY_STORE": "s3://bucket/creds.json"}, "STORE", "must start with file://"},
		{"store scheme hides password", map[string]string{"PLEO_PROXY_STORE": "mysql://u:hunter2@db/x"}, "STORE", "must start with"},
		{"store relative file", map[string]string{"PLEO_PROXY_STORE": "file://data/creds.json"}, "STORE", "absolute path"},
		{"store file root", map[string]string{"PLEO_PROXY_STORE": "file:///"}, "STORE", "absolute path"},
		{"store memory with path", map[string]string{"PLEO_PROXY_STORE": "memory://x"}, "STORE", "must start with"},
		{"store empty", map[string]string{"PLEO_PROXY_STORE": ""}, "STORE", "set but empty"},

		{"key too short", map[string]string{"PLEO_PROXY_ENCRYPTION_KEY": shortKey}, "ENCRYPTION_KEY", "decodes to 16 bytes, want 32"},
		{"key not base64", map[string]string{"PLEO_PROXY_ENCRYPTION_KEY": "not*base64!"}, "ENCRYPTION_KEY", "not standard base64"},
		{"second key bad", map[string]string{"PLEO_PROXY_ENCRYPTION_KEY": key(1) + "," + shortKey}, "ENCRYPTION_KEY", "key 2 of 2"},
		{"key white space", map[string]string{"PLEO_PROXY_ENCRYPTION_KEY": " \n"}, "ENCRYPTION_KEY", "holds no key"},
		{"key only commas", map[string]string{"PLEO_PROXY_ENCRYPTION_KEY": ", ,"}, "ENCRYPTION_KEY", "holds no key"},
		{"key empty", map[string]string{"PLEO_PROXY_ENCRYPTION_KEY": ""}, "ENCRYPTION_KEY", "unencrypted"},
		{"key and key file", map[string]string{"PLEO_PROXY_ENCRYPTION_KEY": key(1), "PLEO_PROXY_ENCRYPTION_KEY_FILE": empty}, "ENCRYPTION_KEY", "PLEO_PROXY_ENCRYPTION_KEY_FILE; set one"},
		{"key file empty value", map[string]string{"PLEO_PROXY_ENCRYPTION_KEY_FILE": ""}, "ENCRYPTION_KEY_FILE", "unencrypted"},
		{"key file unreadable", map[string]string{"PLEO_PROXY_ENCRYPTION_KEY_FILE": unreadable}, "ENCRYPTION_KEY_FILE", "cannot read"},
		{"key file bad key", map[string]string{"PLEO_PROXY_ENCRYPTION_KEY_FILE": writeFile(t, "key", shortKey+"\n")}, "ENCRYPTION_KEY_FILE", "want 32"},

		{"client secret and file", map[string]string{"PLEO_PROXY_OAUTH_CLIENT_ID": "c", "PLEO_PROXY_OAUTH_CLIENT_SECRET": "s", "PLEO_PROXY_OAUTH_CLIENT_SECRET_FILE": empty}, "OAUTH_CLIENT_SECRET", "set one"},
		{"client secret file unreadable", map[string]string{"PLEO_PROXY_OAUTH_CLIENT_ID": "c", "PLEO_PROXY_OAUTH_CLIENT_SECRET_FILE": unreadable}, "OAUTH_CLIENT_SECRET_FILE", "cannot read"},
		{"client secret file problem is not repeated", map[string]string{"PLEO_PROXY_OAUTH_CLIENT_ID": "c", "PLEO_PROXY_OAUTH_CLIENT_SECRET_FILE": unreadable}, "OAUTH_CLIENT_SECRET_FILE", "cannot read"},
		{"client secret file empty", map[string]string{"PLEO_PROXY_OAUTH_CLIENT_ID": "c", "PLEO_PROXY_OAUTH_CLIENT_SECRET_FILE": empty}, "OAUTH_CLIENT_SECRET_FILE", "is empty"},
		{"client id without secret", map[string]string{"PLEO_PROXY_OAUTH_CLIENT_ID": "c"}, "OAUTH_CLIENT_SECRET", "required when PLEO_PROXY_OAUTH_CLIENT_ID"},
		{"client secret without id", map[string]string{"PLEO_PROXY_OAUTH_CLIENT_SECRET": "s"}, "OAUTH_CLIENT_ID", "required when PLEO_PROXY_OAUTH_CLIENT_SECRET"},

		{"token url not a URL", map[string]string{"PLEO_PROXY_OAUTH_TOKEN_URL": "auth.pleo.io/oauth/token"}, "OAUTH_TOKEN_URL", "absolute"},
		{"token url empty", map[string]string{"PLEO_PROXY_OAUTH_TOKEN_URL": ""}, "OAUTH_TOKEN_URL", "set but empty"},
		{"authorize url query", map[string]string{"PLEO_PROXY_OAUTH_AUTHORIZE_URL": "https://auth.pleo.io/oauth/authorize?x=1"}, "OAUTH_AUTHORIZE_URL", "query"},
		{"authorize url empty", map[string]string{"PLEO_PROXY_OAUTH_AUTHORIZE_URL": ""}, "OAUTH_AUTHORIZE_URL", "set but empty"},
		{"scope with quote", map[string]string{"PLEO_PROXY_OAUTH_SCOPES": `users:read bad"scope`}, "OAUTH_SCOPES", "not a valid OAuth scope"},
		{"redirect plain http", map[string]string{"PLEO_PROXY_OAUTH_REDIRECT_URL": "http://proxy.example.com/callback"}, "OAUTH_REDIRECT_URL", "must use https"},
		{"redirect relative", map[string]string{"PLEO_PROXY_OAUTH_REDIRECT_URL": "/callback"}, "OAUTH_REDIRECT_URL", "absolute"},
		{"connect not host:port", map[string]string{"PLEO_PROXY_CONNECT_ADDR": "localhost"}, "CONNECT_ADDR", "host:port"},
		{"success URL over http", map[string]string{"PLEO_PROXY_CONNECT_SUCCESS_URL": "http://app.example.com/done"}, "CONNECT_SUCCESS_URL", "must use https"},
		{"success URL not absolute", map[string]string{"PLEO_PROXY_CONNECT_SUCCESS_URL": "/done"}, "CONNECT_SUCCESS_URL", "absolute"},
		{"connect without client id", map[string]string{"PLEO_PROXY_CONNECT_ADDR": ":7382"}, "OAUTH_CLIENT_ID", "required when PLEO_PROXY_CONNECT_ADDR"},
		{"connect without client secret", map[string]string{"PLEO_PROXY_CONNECT_ADDR": ":7382"}, "OAUTH_CLIENT_SECRET", "required when PLEO_PROXY_CONNECT_ADDR"},
		{"connect without redirect", map[string]string{"PLEO_PROXY_CONNECT_ADDR": ":7382"}, "OAUTH_REDIRECT_URL", "required when PLEO_PROXY_CONNECT_ADDR"},

		{"keepalive zero", map[string]string{"PLEO_PROXY_KEEPALIVE_INTERVAL": "0s"}, "KEEPALIVE_INTERVAL", "more than 0"},
		{"keepalive no unit", map[string]string{"PLEO_PROXY_KEEPALIVE_INTERVAL": "24"}, "KEEPALIVE_INTERVAL", "not a duration"},

		{"company header with space", map[string]string{"PLEO_PROXY_COMPANY_HEADER": "X Company"}, "COMPANY_HEADER", "not a valid HTTP header name"},
		{"company header authorization", map[string]string{"PLEO_PROXY_COMPANY_HEADER": "authorization"}, "COMPANY_HEADER", "cannot be used"},
		{"company header empty", map[string]string{"PLEO_PROXY_COMPANY_HEADER": ""}, "COMPANY_HEADER", "set but empty"},
		{"tenant header proxy-authorization", map[string]string{"PLEO_PROXY_TENANT_HEADER": "Proxy-Authorization"}, "TENANT_HEADER", "cannot be used"},
		{"tenant header host", map[string]string{"PLEO_PROXY_TENANT_HEADER": "HOST"}, "TENANT_HEADER", "cannot be used"},
		{"tenant header colon", map[string]string{"PLEO_PROXY_TENANT_HEADER": "X-Tenant:"}, "TENANT_HEADER", "not a valid HTTP header name"},
		{"tenant header empty", map[string]string{"PLEO_PROXY_TENANT_HEADER": ""}, "TENANT_HEADER", "set but empty"},
		{"tenant header same as company", map[string]string{"PLEO_PROXY_TENANT_HEADER": "x-pleo-company-id"}, "TENANT_HEADER", "must differ"},

		{"default company not a UUID", map[string]string{"PLEO_PROXY_DEFAULT_COMPANY_ID": "acme"}, "DEFAULT_COMPANY_ID", `"acme" is not a company id`},
		{"refresh before not a duration", map[string]string{"PLEO_PROXY_REFRESH_BEFORE": "abc"}, "REFRESH_BEFORE", `"abc" is not a duration`},
		{"refresh before negative", map[string]string{"PLEO_PROXY_REFRESH_BEFORE": "-1s"}, "REFRESH_BEFORE", "0 or more"},
		{"max replay negative", map[string]string{"PLEO_PROXY_MAX_REPLAY_BYTES": "-1"}, "MAX_REPLAY_BYTES", "0 or more"},
		{"max replay with unit", map[string]string{"PLEO_PROXY_MAX_REPLAY_BYTES": "1MB"}, "MAX_REPLAY_BYTES", "not a whole number"},
		{"upstream timeout zero", map[string]string{"PLEO_PROXY_UPSTREAM_TIMEOUT": "0"}, "UPSTREAM_TIMEOUT", "more than 0"},
		{"upstream timeout negative", map[string]string{"PLEO_PROXY_UPSTREAM_TIMEOUT": "-30s"}, "UPSTREAM_TIMEOUT", "more than 0"},
		{"cache size zero", map[string]string{"PLEO_PROXY_CACHE_SIZE": "0"}, "CACHE_SIZE", "1 or more"},
		{"cache size not a number", map[string]string{"PLEO_PROXY_CACHE_SIZE": "lots"}, "CACHE_SIZE", "not a whole number"},
		{"upstream max conns zero", map[string]string{"PLEO_PROXY_UPSTREAM_MAX_CONNS": "0"}, "UPSTREAM_MAX_CONNS", "1 or more"},
		{"max client conns zero", map[string]string{"PLEO_PROXY_MAX_CLIENT_CONNS": "0"}, "MAX_CLIENT_CONNS", "1 or more"},
		{"max client conns not a number", map[string]string{"PLEO_PROXY_MAX_CLIENT_CONNS": "many"}, "MAX_CLIENT_CONNS", "not a whole number"},
		{"memory limit word", map[string]string{"PLEO_PROXY_MEMORY_LIMIT": "lots"}, "MEMORY_LIMIT", "not auto, off or a size"},
		{"memory limit decimal unit", map[string]string{"PLEO_PROXY_MEMORY_LIMIT": "64MB"}, "MEMORY_LIMIT", "not auto, off or a size"},
		{"memory limit negative", map[string]string{"PLEO_PROXY_MEMORY_LIMIT": "-64MiB"}, "MEMORY_LIMIT", "not auto, off or a size"},
		{"memory limit overflow", map[string]string{"PLEO_PROXY_MEMORY_LIMIT": "9999999999999GiB"}, "MEMORY_LIMIT", "not auto, off or a size"},
		{"memory limit tiny", map[string]string{"PLEO_PROXY_MEMORY_LIMIT": "4MiB"}, "MEMORY_LIMIT", "less than 16MiB"},
		{"events URL without a key", map[string]string{"PLEO_PROXY_EVENTS_URL": "http://billing.internal/hooks"}, "EVENTS_KEY", "at least 32 bytes"},
		{"events key too short", map[string]string{"PLEO_PROXY_EVENTS_URL": "http://billing.internal/hooks", "PLEO_PROXY_EVENTS_KEY": "short"}, "EVENTS_KEY", "at least 32 bytes"},
		{"events URL not http", map[string]string{"PLEO_PROXY_EVENTS_URL": "ftp://billing.internal/hooks", "PLEO_PROXY_EVENTS_KEY": strings.Repeat("k", 32)}, "EVENTS_URL", "not an absolute http"},

		{"admin token and file", map[string]string{"PLEO_PROXY_ADMIN_TOKEN": "a", "PLEO_PROXY_ADMIN_TOKEN_FILE": empty}, "ADMIN_TOKEN", "set one"},
		{"admin token file unreadable", map[string]string{"PLEO_PROXY_ADMIN_TOKEN_FILE": unreadable}, "ADMIN_TOKEN_FILE", "cannot read"},
		{"admin token with space", map[string]string{"PLEO_PROXY_ADMIN_TOKEN": "two words"}, "ADMIN_TOKEN", "space"},
		{"client tokens and file", map[string]string{"PLEO_PROXY_CLIENT_TOKENS": "a", "PLEO_PROXY_CLIENT_TOKENS_FILE": empty}, "CLIENT_TOKENS", "set one"},
		{"client tokens file unreadable", map[string]string{"PLEO_PROXY_CLIENT_TOKENS_FILE": unreadable}, "CLIENT_TOKENS_FILE", "cannot read"},
		{"client token with space", map[string]string{"PLEO_PROXY_CLIENT_TOKENS": "good,two words"}, "CLIENT_TOKENS", "token 2"},
		{"client tokens only commas", map[string]string{"PLEO_PROXY_CLIENT_TOKENS": " , ,"}, "CLIENT_TOKENS", "no token"},

		{"log format", map[string]string{"PLEO_PROXY_LOG_FORMAT": "xml"}, "LOG_FORMAT", `"xml" is not text or json`},
		{"log level", map[string]string{"PLEO_PROXY_LOG_LEVEL": "verbose"}, "LOG_LEVEL", `"verbose" is not debug, info, warn or error`},
		{"token timeout zero", map[string]string{"PLEO_PROXY_TOKEN_TIMEOUT": "0s"}, "TOKEN_TIMEOUT", "more than 0"},
		{"shutdown timeout bad", map[string]string{"PLEO_PROXY_SHUTDOWN_TIMEOUT": "soon"}, "SHUTDOWN_TIMEOUT", "not a duration"},
		{"shutdown delay bad", map[string]string{"PLEO_PROXY_SHUTDOWN_DELAY": "a bit"}, "SHUTDOWN_DELAY", "not a duration"},
		{"shutdown delay negative", map[string]string{"PLEO_PROXY_SHUTDOWN_DELAY": "-5s"}, "SHUTDOWN_DELAY", "0 or more"},
		{"store poll too slow", map[string]string{"PLEO_PROXY_STORE_POLL_INTERVAL": "11s"}, "STORE_POLL_INTERVAL", "more than 10s"},
		{"store poll zero", map[string]string{"PLEO_PROXY_STORE_POLL_INTERVAL": "0s"}, "STORE_POLL_INTERVAL", "more than 0"},
		{"pprof not a bool", map[string]string{"PLEO_PROXY_ENABLE_PPROF": "maybe"}, "ENABLE_PPROF", "not true or false"},

		{"unknown variable", map[string]string{"PLEO_PROXY_LISTEN_ADR": "127.0.0.1:7380"}, "LISTEN_ADR", "did you mean PLEO_PROXY_LISTEN_ADDR?"},
		{"unknown variable far from any", map[string]string{"PLEO_PROXY_WHATEVER": "1"}, "WHATEVER", "not a variable this sidecar reads"},

		{"all interfaces without tokens", map[string]string{"PLEO_PROXY_LISTEN_ADDR": "0.0.0.0:7380"}, "CLIENT_TOKENS", "not a loopback address"},
		{"empty host without tokens", map[string]string{"PLEO_PROXY_LISTEN_ADDR": ":7380"}, "CLIENT_TOKENS", "not a loopback address"},
		{"ipv6 any without tokens", map[string]string{"PLEO_PROXY_LISTEN_ADDR": "[::]:7380"}, "CLIENT_TOKENS", "not a loopback address"},
		{"pod ip without tokens", map[string]string{"PLEO_PROXY_LISTEN_ADDR": "10.1.2.3:7380"}, "CLIENT_TOKENS", "not a loopback address"},
		{"host name without tokens", map[string]string{"PLEO_PROXY_LISTEN_ADDR": "proxy.internal:7380"}, "CLIENT_TOKENS", "not a loopback address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, lines := problems(t, tt.environ)
			prefix := Prefix + tt.wantVar + ": "
			i := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, prefix) })
			if i < 0 {
				t.Fatalf("no line starts with %q:\n%s", prefix, strings.Join(lines, "\n"))
			}
			if !strings.Contains(lines[i], tt.want) {
				t.Errorf("line %q does not contain %q", lines[i], tt.want)
			}
			for _, l := range lines {
				if !strings.HasPrefix(l, Prefix) {
					t.Errorf("line %q does not start with a variable name", l)
				}
				if strings.Contains(l, "hunter2") {
					t.Errorf("line %q shows a password", l)
				}
			}
		})
	}
}

func TestParseReportsEveryProblem(t *testing.T) {
	errs, lines := problems(t, map[string]string{
		"PLEO_PROXY_ENVIRONMENT":      "prod",
		"PLEO_PROXY_LISTEN_ADDR":      "0.0.0.0:7380",
		"PLEO_PROXY_STORE":            "",
		"PLEO_PROXY_ENCRYPTION_KEY":   "short",
		"PLEO_PROXY_REFRESH_BEFORE":   "abc",
		"PLEO_PROXY_CACHE_SIZE":       "-5",
		"PLEO_PROXY_LOG_LEVEL":        "loud",
		"PLEO_PROXY_REFRESH_BEFOR":    "1s",
		"PLEO_PROXY_ADMIN_TOKEN_FILE": filepath.Join(t.TempDir(), "missing"),
	})
	wantVars := []string{ // unknown variables first, then in the contract's order
		"PLEO_PROXY_REFRESH_BEFOR",
		"PLEO_PROXY_ENVIRONMENT",
		"PLEO_PROXY_STORE",
		"PLEO_PROXY_ENCRYPTION_KEY",
		"PLEO_PROXY_REFRESH_BEFORE",
		"PLEO_PROXY_CACHE_SIZE",
		"PLEO_PROXY_ADMIN_TOKEN_FILE",
		"PLEO_PROXY_CLIENT_TOKENS",
		"PLEO_PROXY_LOG_LEVEL",
	}
	var gotVars []string
	for _, p := range *errs {
		gotVars = append(gotVars, p.Variable)
	}
	if !slices.Equal(gotVars, wantVars) {
		t.Errorf("problems for\n%v\nwant\n%v\nerror:\n%s", gotVars, wantVars, strings.Join(lines, "\n"))
	}
	if want := `PLEO_PROXY_REFRESH_BEFORE: "abc" is not a duration`; !slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, want) }) {
		t.Errorf("no line starts with %q", want)
	}
	var err error = errs
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("errors.Is(err, fs.ErrNotExist) = false for an unreadable _FILE")
	}
}

func TestParseFileVariants(t *testing.T) {
	environ := map[string]string{
		"PLEO_PROXY_ENCRYPTION_KEY_FILE":      writeFile(t, "keys", key(3)+"\n"+key(4)+"\n"),
		"PLEO_PROXY_OAUTH_CLIENT_ID":          "client",
		"PLEO_PROXY_OAUTH_CLIENT_SECRET_FILE": writeFile(t, "client-secret", "s3cret value \n"),
		"PLEO_PROXY_ADMIN_TOKEN_FILE":         writeFile(t, "admin", "admin-token\r\n"),
		"PLEO_PROXY_CLIENT_TOKENS_FILE":       writeFile(t, "clients", "tok-1\ntok-2, tok-3\n\n"),
		"PLEO_PROXY_LISTEN_ADDR":              ":7380",
	}
	cfg, err := Parse(environ)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if want := [][]byte{bytes.Repeat([]byte{3}, 32), bytes.Repeat([]byte{4}, 32)}; !reflect.DeepEqual(cfg.EncryptionKeys, want) {
		t.Errorf("EncryptionKeys = %x, want %x", cfg.EncryptionKeys, want)
	}
	if got := cfg.OAuthClientSecret.Reveal(); got != "s3cret value" {
		t.Errorf("OAuthClientSecret = %q", got)
	}
	if got := cfg.AdminToken.Reveal(); got != "admin-token" {
		t.Errorf("AdminToken = %q", got)
	}
	if want := []credentials.Secret{"tok-1", "tok-2", "tok-3"}; !slices.Equal(cfg.ClientTokens, want) {
		t.Errorf("ClientTokens = %d tokens, want %d", len(cfg.ClientTokens), len(want))
	}
}

func TestListenIsLoopback(t *testing.T) {
	tests := []struct {
		addr string
		want bool
	}{
		{"127.0.0.1:7380", true},
		{"127.1.2.3:7380", true},
		{"[::1]:7380", true},
		{"localhost:7380", true},
		{"LOCALHOST:7380", true},
		{"[::ffff:127.0.0.1]:7380", true},
		{":7380", false},
		{"0.0.0.0:7380", false},
		{"[::]:7380", false},
		{"10.0.0.1:7380", false},
		{"localhost.example.com:7380", false},
		{"not an address", false},
	}
	for _, tt := range tests {
		if got := (&Config{ListenAddr: tt.addr}).ListenIsLoopback(); got != tt.want {
			t.Errorf("ListenIsLoopback(%q) = %v, want %v", tt.addr, got, tt.want)
		}
	}
}

func TestParseIgnoresKubernetesServiceLinks(t *testing.T) {
	_, err := Parse(map[string]string{
		"PLEO_PROXY_SERVICE_HOST":        "10.0.0.7",
		"PLEO_PROXY_SERVICE_PORT":        "7380",
		"PLEO_PROXY_SERVICE_PORT_HTTP":   "7380",
		"PLEO_PROXY_PORT":                "tcp://10.0.0.7:7380",
		"PLEO_PROXY_PORT_7380_TCP":       "tcp://10.0.0.7:7380",
		"PLEO_PROXY_PORT_7380_TCP_PROTO": "tcp",
		"PLEO_PROXY_PORT_7380_TCP_PORT":  "7380",
		"PLEO_PROXY_PORT_7380_TCP_ADDR":  "10.0.0.7",
	})
	if err != nil {
		t.Errorf("Parse: %v", err)
	}
}

func TestVariables(t *testing.T) {
	vars := Variables()
	for _, want := range []string{"PLEO_PROXY_ENVIRONMENT", "PLEO_PROXY_CLIENT_TOKENS_FILE", "PLEO_PROXY_ENABLE_PPROF"} {
		if !slices.Contains(vars, want) {
			t.Errorf("Variables() lacks %s", want)
		}
	}
	if len(vars) != 44 {
		t.Errorf("Variables() has %d names, want 44", len(vars))
	}
}

// TestExampleEnvFile keeps config.example.env in step with the variables: it must mention
// each one, and parse as it is.
func TestExampleEnvFile(t *testing.T) {
	const path = "../config.example.env"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range Variables() {
		if !strings.Contains(string(data), v+"=") {
			t.Errorf("%s does not list %s", path, v)
		}
	}
	environ, err := LoadEnvFile(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Parse(environ); err != nil {
		t.Errorf("%s does not parse: %v", path, err)
	}
}

func TestEnviron(t *testing.T) {
	got := Environ([]string{"A=1", "B=x=y", "C=", "NOEQUALS", "=hidden", "A=2"})
	want := map[string]string{"A": "1", "B": "x=y", "C": ""}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Environ = %v, want %v", got, want)
	}
}

func TestLoadEnvFile(t *testing.T) {
	path := writeFile(t, "proxy.env", `# a comment
PLEO_PROXY_LOG_LEVEL=debug
export PLEO_PROXY_LOG_FORMAT=json
PLEO_PROXY_ADMIN_ADDR="127.0.0.1:9191" # trailing comment
PLEO_PROXY_CACHE_SIZE='5'
`)
	got, err := LoadEnvFile(path, map[string]string{"PLEO_PROXY_LOG_LEVEL": "warn", "HOME": "/root"})
	if err != nil {
		t.Fatalf("LoadEnvFile: %v", err)
	}
	want := map[string]string{
		"PLEO_PROXY_LOG_LEVEL":  "warn", // the process environment wins
		"PLEO_PROXY_LOG_FORMAT": "json",
		"PLEO_PROXY_ADMIN_ADDR": "127.0.0.1:9191",
		"PLEO_PROXY_CACHE_SIZE": "5",
		"HOME":                  "/root",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("LoadEnvFile = %v, want %v", got, want)
	}
	cfg, err := Parse(got)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if cfg.LogLevel != slog.LevelWarn || cfg.LogFormat != "json" || cfg.AdminAddr != "127.0.0.1:9191" || cfg.CacheSize != 5 {
		t.Errorf("config from env file: %v", cfg)
	}
}

func TestLoadEnvFileErrors(t *testing.T) {
	tests := []struct {
		name    string
		content string
		want    string
	}{
		{"bad name", "PLEO_PROXY_LOG_LEVEL=debug\n\nBAD-NAME=topsecret\nPLEO_PROXY_ADMIN_TOKEN=topsecret\n", ":3: expected NAME=value"},
		{"bare value", "A=1\ntopsecret\n", ":2: expected NAME=value"},
		{"unterminated quote", "A=1\nB=\"multi\nline\"\nPLEO_PROXY_ADMIN_TOKEN=\"topsecret\nC=3\n", ":4: unterminated quoted value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, "bad.env", tt.content)
			_, err := LoadEnvFile(path, nil)
			if err == nil {
				t.Fatal("LoadEnvFile succeeded")
			}
			if !strings.Contains(err.Error(), path+tt.want) {
				t.Errorf("error %q does not contain %q", err, path+tt.want)
			}
			if strings.Contains(err.Error(), "topsecret") {
				t.Errorf("error %q quotes the file", err)
			}
		})
	}
	_, err := LoadEnvFile(filepath.Join(t.TempDir(), "none.env"), nil)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "none.env") {
		t.Errorf("missing file: %v", err)
	}
}

func TestConfigNeverPrintsSecrets(t *testing.T) {
	secrets := []string{"oauth-client-secret-value", "admin-token-value", "client-token-one", "client-token-two",
		"db-password-value", key(7), key(8), string(bytes.Repeat([]byte{7}, 32))}
	cfg, err := Parse(map[string]string{
		"PLEO_PROXY_STORE":               "postgres://proxy:db-password-value@db/proxy?sslpassword=db-password-value",
		"PLEO_PROXY_ENCRYPTION_KEY":      key(7) + "," + key(8),
		"PLEO_PROXY_OAUTH_CLIENT_ID":     "client-id",
		"PLEO_PROXY_OAUTH_CLIENT_SECRET": "oauth-client-secret-value",
		"PLEO_PROXY_ADMIN_TOKEN":         "admin-token-value",
		"PLEO_PROXY_CLIENT_TOKENS":       "client-token-one,client-token-two",
		"PLEO_PROXY_LISTEN_ADDR":         "0.0.0.0:7380",
	})
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	var out bytes.Buffer
	fmt.Fprintf(&out, "%v %+v %#v %s %q %x %d\n", *cfg, *cfg, *cfg, *cfg, *cfg, *cfg, *cfg)
	fmt.Fprintf(&out, "%v %+v %#v %s\n", cfg, cfg, cfg, cfg)
	fmt.Fprintln(&out, cfg, *cfg, []*Config{cfg}, struct{ C Config }{*cfg})
	for _, h := range []slog.Handler{slog.NewTextHandler(&out, nil), slog.NewJSONHandler(&out, nil)} {
		log := slog.New(h)
		log.Info("config", "config", cfg, "value", *cfg)
		log.Info("config", slog.Any("config", cfg))
	}
	j, err := json.Marshal(cfg)
	if err != nil {
		t.Fatalf("json.Marshal: %v", err)
	}
	out.Write(j)
	printed := out.String()
	for _, s := range secrets {
		if strings.Contains(printed, s) {
			t.Errorf("printed config contains secret %q:\n%s", s, printed)
		}
	}
	for _, want := range []string{"client-id", "admin_token_set", "client_tokens", "postgres://proxy:xxxxx@db/proxy"} {
		if !strings.Contains(printed, want) {
			t.Errorf("printed config lacks %q:\n%s", want, printed)
		}
	}
	var decoded map[string]any
	if err := json.Unmarshal(j, &decoded); err != nil || decoded["encryption_keys"] != float64(2) {
		t.Errorf("json = %s (%v)", j, err)
	}

	// Problems with secrets never quote them either.
	_, err = Parse(map[string]string{
		"PLEO_PROXY_ENCRYPTION_KEY": "topsecret-but-not-base64!",
		"PLEO_PROXY_ADMIN_TOKEN":    "topsecret with space",
		"PLEO_PROXY_CLIENT_TOKENS":  "topsecret token",
	})
	if err == nil || strings.Contains(err.Error(), "topsecret") {
		t.Errorf("error quotes a secret or is nil: %v", err)
	}
}

func TestMemoryLimit(t *testing.T) {
	for _, tc := range []struct {
		value string
		want  MemoryLimit
		str   string
	}{
		{"auto", MemoryLimit{Auto: true}, "auto"},
		{"AUTO", MemoryLimit{Auto: true}, "auto"},
		{"off", MemoryLimit{}, "off"},
		{"56MiB", MemoryLimit{Bytes: 56 << 20}, "56MiB"},
		{"64Mi", MemoryLimit{Bytes: 64 << 20}, "64MiB"},
		{"1GiB", MemoryLimit{Bytes: 1 << 30}, "1GiB"},
		{"1Gi", MemoryLimit{Bytes: 1 << 30}, "1GiB"},
		{"20000KiB", MemoryLimit{Bytes: 20000 << 10}, "20000KiB"},
		{"67108864", MemoryLimit{Bytes: 64 << 20}, "64MiB"},
		{"16777217B", MemoryLimit{Bytes: 16<<20 + 1}, "16777217B"},
	} {
		t.Run(tc.value, func(t *testing.T) {
			got, err := Parse(map[string]string{"PLEO_PROXY_MEMORY_LIMIT": tc.value})
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got.MemoryLimit != tc.want {
				t.Errorf("MemoryLimit = %+v, want %+v", got.MemoryLimit, tc.want)
			}
			if s := got.MemoryLimit.String(); s != tc.str {
				t.Errorf("String() = %q, want %q", s, tc.str)
			}
		})
	}
	got, err := Parse(map[string]string{})
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if !got.MemoryLimit.Auto || got.UpstreamMaxConns != 256 || got.MaxClientConns != 256 {
		t.Errorf("defaults: MemoryLimit %v, UpstreamMaxConns %d, MaxClientConns %d; want auto, 256, 256", got.MemoryLimit, got.UpstreamMaxConns, got.MaxClientConns)
	}
}

// The parsers of a reloaded secret file apply Parse's checks, name the _FILE variable, and
// never quote the content.
func TestParseSecretFiles(t *testing.T) {
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, EncryptionKeySize))
	key2 := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{8}, EncryptionKeySize))
	if s, err := ParseOAuthClientSecretFile([]byte("s3cret-value\n")); err != nil || s.Reveal() != "s3cret-value" {
		t.Fatalf("client secret: %q %v", s.Reveal(), err)
	}
	if tokens, err := ParseClientTokensFile([]byte("tok-a\ntok-b,tok-a\n")); err != nil || len(tokens) != 2 {
		t.Fatalf("client tokens: %d %v", len(tokens), err)
	}
	if keys, err := ParseEncryptionKeyFile([]byte(key2 + "\n" + key + "\n")); err != nil || len(keys) != 2 || keys[0][0] != 8 {
		t.Fatalf("keys: %d %v", len(keys), err)
	}
	bad := []struct {
		name  string
		parse func([]byte) error
		data  string
		want  string
	}{
		{"empty client secret", func(b []byte) error { _, err := ParseOAuthClientSecretFile(b); return err }, " \n", "PLEO_PROXY_OAUTH_CLIENT_SECRET_FILE: the file is empty"},
		{"admin token with a space", func(b []byte) error { _, err := ParseAdminTokenFile(b); return err }, "adm in-secret", "PLEO_PROXY_ADMIN_TOKEN_FILE: contains a space"},
		{"client token with a space", func(b []byte) error { _, err := ParseClientTokensFile(b); return err }, "ok-token\nbad secret", "PLEO_PROXY_CLIENT_TOKENS_FILE: token 2"},
		{"key not base64", func(b []byte) error { _, err := ParseEncryptionKeyFile(b); return err }, "not-base64-secret!", "PLEO_PROXY_ENCRYPTION_KEY_FILE: the key is not standard base64"},
		{"short key", func(b []byte) error { _, err := ParseEncryptionKeyFile(b); return err }, key + "," + base64.StdEncoding.EncodeToString([]byte("short-secret")), "PLEO_PROXY_ENCRYPTION_KEY_FILE: key 2 of 2 decodes to 12 bytes"},
		{"empty key file", func(b []byte) error { _, err := ParseEncryptionKeyFile(b); return err }, "\n", "PLEO_PROXY_ENCRYPTION_KEY_FILE: the file is empty"},
	}
	for _, tc := range bad {
		err := tc.parse([]byte(tc.data))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
			continue
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: the error quotes the content: %v", tc.name, err)
		}
	}
}
