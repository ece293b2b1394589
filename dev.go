package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/config"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/mockpleo"
)

// Demo companies of `serve --dev`.
const (
	devOAuthCompany      = "11111111-1111-4111-8111-111111111111"
	devOAuthTenant       = "acme-erp"
	devIntegratedCompany = "22222222-2222-4222-8222-222222222222"
	devStandaloneCompany = "33333333-3333-4333-8333-333333333333"
	devConnectCompany    = "44444444-4444-4444-8444-444444444444" // the mock's consent grants this one
	devConnectTenant     = "new-erp-tenant"
	devConnectAddr       = "127.0.0.1:7382"
	devRedirectURL       = "http://" + devConnectAddr + "/callback"
	devAdminToken        = "dev-admin-token"
	devAccessTTL         = 20 * time.Second
)

// devPleo is the embedded mock Pleo of `serve --dev`, on loopback.
type devPleo struct {
	mock *mockpleo.Server
	srv  *http.Server
	url  string
	// connectKey signs this process's connect links: random, so links of one --dev run are
	// worthless to any other.
	connectKey string
}

func startDevPleo() (*devPleo, error) {
	mock := mockpleo.New(mockpleo.Options{AccessTTL: devAccessTTL, ConsentCompanyID: devConnectCompany})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("dev: starting the mock Pleo: %w", err)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		ln.Close()
		return nil, fmt.Errorf("dev: connect link key: %w", err)
	}
	d := &devPleo{mock: mock, url: "http://" + ln.Addr().String(), connectKey: base64.StdEncoding.EncodeToString(key)}
	d.srv = &http.Server{Handler: mock.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = d.srv.Serve(ln) }()
	return d, nil
}

func (d *devPleo) Close() { _ = d.srv.Close() }

// environ is the configuration --dev implies; variables set by the user win.
func (d *devPleo) environ() map[string]string {
	return map[string]string{
		"PLEO_PROXY_STORE":               "memory://",
		"PLEO_PROXY_UPSTREAM_URL":        d.url,
		"PLEO_PROXY_OAUTH_TOKEN_URL":     d.url + "/oauth/token",
		"PLEO_PROXY_OAUTH_AUTHORIZE_URL": d.url + "/oauth/authorize",
		"PLEO_PROXY_OAUTH_CLIENT_ID":     mockpleo.DefaultClientID,
		"PLEO_PROXY_OAUTH_CLIENT_SECRET": mockpleo.DefaultClientSecret,
		"PLEO_PROXY_ADMIN_ADDR":          "127.0.0.1:7381",
		"PLEO_PROXY_ADMIN_TOKEN":         devAdminToken,
		"PLEO_PROXY_REFRESH_BEFORE":      "5s",
		"PLEO_PROXY_CONNECT_ADDR":        devConnectAddr,
		"PLEO_PROXY_OAUTH_REDIRECT_URL":  devRedirectURL,
		"PLEO_PROXY_OAUTH_SCOPES":        "export-jobs:read export-items:read",
		"PLEO_PROXY_CONNECT_KEY":         d.connectKey,
	}
}

// adoptConnectListener registers the consent flow's redirect URI with the mock (which then
// matches it exactly, as Pleo does). When --dev's default redirect URL is in use but the
// connect listener is elsewhere (PLEO_PROXY_CONNECT_ADDR set, e.g. to port 0), the redirect
// URL follows the listener.
func (d *devPleo) adoptConnectListener(cfg *config.Config, bound string) {
	if cfg.OAuthRedirectURL != nil && cfg.OAuthRedirectURL.String() == devRedirectURL && bound != devConnectAddr {
		u := *cfg.OAuthRedirectURL
		u.Host = bound
		cfg.OAuthRedirectURL = &u
	}
	if cfg.OAuthRedirectURL != nil {
		d.mock.SetRedirectURIs(cfg.OAuthRedirectURL.String())
	}
}

// seed stores the demo companies: one OAuth (short-lived tokens, so refreshes show), one
// Integrated and one Standalone API key.
func (d *devPleo) seed(ctx context.Context, store credentials.Store) error {
	access, refresh, exp := d.mock.AddOAuthCompany(devOAuthCompany, "export-jobs:read", "export-items:read")
	d.mock.AddAPIKey(devIntegratedCompany, "dev-integrated-key", time.Time{})
	standaloneExp := time.Now().Add(30 * 24 * time.Hour).Truncate(time.Second)
	d.mock.AddAPIKey(devStandaloneCompany, "dev-standalone-key", standaloneExp)
	return store.PutAll(ctx, []credentials.Credential{
		{CompanyID: devOAuthCompany, TenantID: devOAuthTenant, Type: credentials.OAuth2,
			AccessToken: credentials.Secret(access), RefreshToken: credentials.Secret(refresh), ExpiresAt: exp, LastRefreshedAt: time.Now()},
		{CompanyID: devIntegratedCompany, Type: credentials.IntegratedAPIKey, APIKey: "dev-integrated-key"},
		{CompanyID: devStandaloneCompany, Type: credentials.StandaloneAPIKey, APIKey: "dev-standalone-key", ExpiresAt: standaloneExp},
	}, false)
}

// devLinkTTL is the lifetime of the link --dev prints.
const devLinkTTL = 24 * time.Hour

func (d *devPleo) printTry(w io.Writer, listen, adminAddr, connectAddr string, cfg *config.Config, links *connectLinks) {
	p := "http://" + listen
	a := "http://" + adminAddr
	fmt.Fprintf(w, `
pleo-auth-proxy is running in --dev mode against an embedded mock Pleo at %s
(OAuth access tokens live %s here, so you will see refreshes in the log).

Try:
  curl -s %s/v1/export-jobs -H '%s: %s'        # OAuth company
  curl -s '%s/v1/export-jobs?company_id=%s'              # Integrated API key, chosen by query
  curl -s %s/v1/vendors -H '%s: %s'                       # OAuth company, chosen by tenant
  curl -s %s/v1/accounts -H '%s: %s'        # Standalone API key
  curl -s %s/v1/mock/stream?chunks=5 -H '%s: %s'  # a streamed response
  curl -s %s/v1/export-jobs                                                      # a problem: no company
  curl -s %s/metrics | grep ^pleo_proxy_
  curl -s %s/credentials -H 'Authorization: Bearer %s'

`, d.url, devAccessTTL,
		p, cfg.CompanyHeader, devOAuthCompany,
		p, devIntegratedCompany,
		p, cfg.TenantHeader, devOAuthTenant,
		p, cfg.CompanyHeader, devStandaloneCompany,
		p, cfg.CompanyHeader, devOAuthCompany,
		p, a, a, devAdminToken)
	if connectAddr == "off" {
		return
	}
	if links == nil { // PLEO_PROXY_CONNECT_UNSIGNED_LINKS=true and no key
		fmt.Fprintf(w, "The consent flow takes unsigned links: %s/connect?tenant_id=%s\n\n", publicBase(cfg, connectAddr), devConnectTenant)
		return
	}
	// A link signed with this process's key, on the redirect URL's host (the flow's binding
	// cookie is per host).
	start, _, err := links.ConnectLink(devConnectTenant, devLinkTTL)
	if err != nil {
		fmt.Fprintf(w, "No connect link: %v\n\n", err)
		return
	}
	fmt.Fprintf(w, `Connect a company with the consent flow (the mock consents at once, for company %s);
this link is signed for tenant %s and valid for %s in this process only:
  open '%s'                      # in a browser, or:
  curl -sL -c /dev/null '%s'     # -c turns on curl's cookies
  curl -s %s/v1/export-jobs -H '%s: %s'                    # then use it
  curl -s %s/metrics | grep ^pleo_proxy_connect
Mint another link, as an integration would (or change a character of this one to see a 403):
  curl -s -X POST %s/connect-links -H 'Authorization: Bearer %s' -d '{"tenant_id": "another-tenant", "ttl": "1h"}'

`, devConnectCompany, devConnectTenant, devLinkTTL, start, start, p, cfg.TenantHeader, devConnectTenant, a, a, devAdminToken)
}

// publicBase is the connect listener's public scheme and host.
func publicBase(cfg *config.Config, connectAddr string) string {
	if cfg.OAuthRedirectURL != nil {
		return cfg.OAuthRedirectURL.Scheme + "://" + cfg.OAuthRedirectURL.Host
	}
	return "http://" + connectAddr
}
