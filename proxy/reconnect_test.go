package proxy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/connect"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/proxy"
)

// A reauthorization_required problem carries the hook's reconnect_url: here, as serve wires
// it, a signed connect link for the credential's tenant, which verifies for that tenant.
func TestReauthorizationRequiredCarriesReconnectURL(t *testing.T) {
	links, err := connect.NewLinks([][]byte{bytes.Repeat([]byte{3}, 32)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	base, _ := url.Parse("https://connect.example.com/callback")
	var asked []string
	var e *oaEnv
	hook := func(companyID string) string {
		asked = append(asked, companyID)
		c, err := e.mem.Get(context.Background(), companyID)
		if err != nil || c.TenantID == "" {
			return ""
		}
		u, _, _ := links.URL(base, c.TenantID, connect.DefaultLinkTTL)
		return u
	}
	e = newOAuthEnv(t, oaConfig{proxy: func(o *proxy.Options) { o.ReconnectURL = hook }})
	withTenant, withoutTenant := oaCompany(1), oaCompany(2)
	toks := e.grants(withTenant, withoutTenant)
	for id, tok := range toks {
		// Someone else used the refresh token: the stored one is spent.
		if _, err := e.srv.OAuth2Config().TokenSource(context.Background(), &oauth2.Token{RefreshToken: tok.RefreshToken}).Token(); err != nil {
			t.Fatal(err)
		}
		c := e.oauthCred(id, tok, -time.Minute)
		if id == withTenant {
			c.TenantID = "erp-7"
		}
		e.put(c)
	}

	reconnect := func(r oaReply) (string, bool) {
		t.Helper()
		if r.status != http.StatusUnauthorized || r.problem(t) != "reauthorization_required" {
			t.Fatalf("%d %s", r.status, r.body)
		}
		var p map[string]any
		if err := json.Unmarshal(r.body, &p); err != nil {
			t.Fatal(err)
		}
		u, ok := p["reconnect_url"].(string)
		return u, ok
	}
	raw, ok := reconnect(e.call(http.MethodGet, withTenant, nil))
	if !ok {
		t.Fatal("no reconnect_url")
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host != "connect.example.com" || u.Path != connect.ConnectPath {
		t.Fatalf("reconnect_url %s", raw)
	}
	if tenant, err := links.Verify(u.RawQuery); err != nil || tenant != "erp-7" {
		t.Fatalf("reconnect_url verifies as %q, %v", tenant, err)
	}
	// The cached verdict answers the next request too, with a fresh link.
	if again, _ := reconnect(e.call(http.MethodGet, withTenant, nil)); again == "" || again == raw {
		t.Fatalf("second reconnect_url %q (first %q)", again, raw)
	}
	// A company without a tenant: no link, no field.
	if raw, ok := reconnect(e.call(http.MethodGet, withoutTenant, nil)); ok {
		t.Fatalf("reconnect_url %q for a company without a tenant", raw)
	}
	// Other problems never ask the hook.
	n := len(asked)
	if r := e.call(http.MethodGet, oaCompany(9), nil); r.problem(t) != "company_unknown" || len(asked) != n {
		t.Fatalf("%s; hook asked %v", r.body, asked)
	}
}

// Without the hook the problem is as before: no reconnect_url.
func TestReauthorizationRequiredWithoutHook(t *testing.T) {
	e := newOAuthEnv(t, oaConfig{})
	company := oaCompany(1)
	tok := e.grants(company)[company]
	if _, err := e.srv.OAuth2Config().TokenSource(context.Background(), &oauth2.Token{RefreshToken: tok.RefreshToken}).Token(); err != nil {
		t.Fatal(err)
	}
	c := e.oauthCred(company, tok, -time.Minute)
	c.TenantID = "erp-7"
	e.put(c)
	r := e.call(http.MethodGet, company, nil)
	if r.status != http.StatusUnauthorized || bytes.Contains(r.body, []byte("reconnect_url")) {
		t.Fatalf("%d %s", r.status, r.body)
	}
}
