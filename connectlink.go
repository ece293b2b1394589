package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/hashicorp/golang-lru/v2/expirable"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/config"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/connect"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
)

const usageConnectLink = "usage: connect-link [--env-file PATH] --tenant T [--ttl DURATION]"

// errNoConnectKey is a link asked for where no link key can be had.
var errNoConnectKey = errors.New("PLEO_PROXY_CONNECT_KEY: no connect link key: set it (openssl rand -base64 32), " +
	"or PLEO_PROXY_ENCRYPTION_KEY to derive it from")

// linkKeys returns the keys of signed connect links: PLEO_PROXY_CONNECT_KEY's, else one
// derived from each PLEO_PROXY_ENCRYPTION_KEY (newest first, so the newest signs), else none.
func linkKeys(cfg *config.Config) ([][]byte, error) {
	return linkKeysFrom(cfg.ConnectKeys, cfg.EncryptionKeys)
}

// linkKeysFrom is linkKeys over the keys as last read.
func linkKeysFrom(connectKeys, encryptionKeys [][]byte) ([][]byte, error) {
	if len(connectKeys) > 0 {
		return connectKeys, nil
	}
	keys := make([][]byte, 0, len(encryptionKeys))
	for _, k := range encryptionKeys {
		d, err := connect.DeriveLinkKey(k)
		if err != nil {
			return nil, err
		}
		keys = append(keys, d)
	}
	return keys, nil
}

// newLinks builds the link signer of cfg, or returns nil when no key can be had.
func newLinks(cfg *config.Config) (*connect.Links, error) {
	keys, err := linkKeys(cfg)
	if err != nil || len(keys) == 0 {
		return nil, err
	}
	return connect.NewLinks(keys, nil)
}

// followKeys makes the signer follow reloaded key files: PLEO_PROXY_CONNECT_KEY_FILE, or
// PLEO_PROXY_ENCRYPTION_KEY_FILE when the link keys are derived from it. Links signed under
// the old keys stop verifying once the new file drops them, as at a restart.
func (c *connectLinks) followKeys(live *liveSecrets, log *slog.Logger) {
	if c == nil {
		return
	}
	update := func() {
		keys, err := linkKeysFrom(live.connectKeys.Load(), live.encryptionKeys.Load())
		if err == nil && len(keys) > 0 {
			err = c.links.SetKeys(keys)
		}
		if err != nil {
			log.Error("connect link keys not changed", "error", err)
		}
	}
	live.connectKeys.OnChange(func([][]byte) { update() })
	live.encryptionKeys.OnChange(func([][]byte) {
		if len(live.connectKeys.Load()) == 0 {
			update()
		}
	})
}

// connectLinks mints links on the connect listener's public address: the scheme and host of
// PLEO_PROXY_OAUTH_REDIRECT_URL, which Pleo sends the browser back to, so the listener that
// serves the callback serves /connect too (and the flow's binding cookie is for that host).
type connectLinks struct {
	links *connect.Links
	cfg   *config.Config // OAuthRedirectURL is read at each mint: --dev moves it to the bound port
}

// signer is the link signer, nil for a nil *connectLinks.
func (c *connectLinks) signer() *connect.Links {
	if c == nil {
		return nil
	}
	return c.links
}

// mint is ConnectLink as a function, nil for a nil *connectLinks.
func (c *connectLinks) mint() func(tenant string, ttl time.Duration) (string, time.Time, error) {
	if c == nil {
		return nil
	}
	return c.ConnectLink
}

// eventLinkTTL is the lifetime of the reconnect_url of an event: its receiver may pass it on
// to a person by mail, so it lives the longest a link may.
const eventLinkTTL = connect.MaxLinkTTL

// eventLink is the events' reconnect_url hook: a link for a tenant, or "" (nil for a nil
// *connectLinks).
func (c *connectLinks) eventLink() func(tenantID string) string {
	if c == nil {
		return nil
	}
	return func(tenantID string) string {
		if tenantID == "" {
			return ""
		}
		u, _, err := c.ConnectLink(tenantID, eventLinkTTL)
		if err != nil {
			return ""
		}
		return u
	}
}

// ConnectLink returns a signed link for tenant valid for ttl, and its expiry.
func (c connectLinks) ConnectLink(tenant string, ttl time.Duration) (string, time.Time, error) {
	base := c.cfg.OAuthRedirectURL
	if base == nil {
		return "", time.Time{}, errors.New("PLEO_PROXY_OAUTH_REDIRECT_URL is not set: it gives the connect listener's public address")
	}
	return c.links.URL(base, tenant, ttl)
}

// reconnectURLs is the data listener's reconnect_url hook: a fresh link for the tenant of a
// company whose refresh token was rejected, or "" when the company has no tenant. Tenants are
// remembered for a minute, so a caller retrying a dead company does not read the store for
// each answer.
func reconnectURLs(store credentials.Store, links connectLinks) func(companyID string) string {
	tenants := expirable.NewLRU[string, string](4096, nil, time.Minute)
	return func(companyID string) string {
		tenant, ok := tenants.Get(companyID)
		if !ok {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			c, err := store.Get(ctx, companyID)
			cancel()
			if err != nil {
				return ""
			}
			tenant = c.TenantID
			tenants.Add(companyID, tenant)
		}
		if tenant == "" {
			return ""
		}
		u, _, err := links.ConnectLink(tenant, connect.DefaultLinkTTL)
		if err != nil {
			return ""
		}
		return u
	}
}

// connectLinkCommand runs `connect-link --tenant T [--ttl D]`: it prints a signed link.
func connectLinkCommand(args, environ []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("connect-link", flag.ContinueOnError)
	envFile := fs.String("env-file", "", "load a dotenv file first (the process environment wins)")
	tenant := fs.String("tenant", "", "the tenant the link connects (required)")
	ttl := fs.Duration("ttl", connect.DefaultLinkTTL, "how long the link is valid (at most 168h)")
	if help, err := parseFlags(fs, args, usageConnectLink, stdout); help || err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("connect-link takes no arguments, got %q\n%s", fs.Args(), usageConnectLink)}
	}
	if *tenant == "" {
		return usageError{"--tenant is required\n" + usageConnectLink}
	}
	if err := connect.CheckTenant(*tenant); err != nil {
		return usageError{"--tenant: " + err.Error()}
	}
	if err := connect.CheckLinkTTL(*ttl); err != nil {
		return usageError{"--ttl: " + err.Error()}
	}
	cfg, err := loadConfig(environ, *envFile, nil)
	if err != nil {
		return err
	}
	links, err := newLinks(cfg)
	if err != nil {
		return err
	}
	if links == nil {
		return errNoConnectKey
	}
	u, expires, err := connectLinks{links: links, cfg: cfg}.ConnectLink(*tenant, *ttl)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, u)
	fmt.Fprintf(stderr, "valid until %s for tenant %q\n", expires.Format(time.RFC3339), *tenant)
	return nil
}
