package main

// The outbound policy through the built binary: with HTTP_PROXY/HTTPS_PROXY set, the code
// exchange, /v1/installations/me, a token refresh, an upstream call and credcmd's key
// discovery all go to their hosts directly, and the proxy sees nothing.

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/oauthtest"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/mockpleo"
)

// countingProxy is a listener standing in for an HTTP proxy: it counts the connections it
// gets and closes them.
func countingProxy(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	return "http://" + ln.Addr().String(), &n
}

// proxyEnv points every proxy variable Go (and curl-style tools) read at addr.
func proxyEnv(addr string) []string {
	return []string{"HTTP_PROXY=" + addr, "HTTPS_PROXY=" + addr, "http_proxy=" + addr, "https_proxy=" + addr, "ALL_PROXY=" + addr}
}

// hostNamed rewrites a loopback URL to reach the same server through this machine's host
// name: Go never proxies loopback addresses or "localhost", so only a name shows whether a
// proxy from the environment would be used.
func hostNamed(t *testing.T, raw string) string {
	t.Helper()
	name, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := net.LookupHost(name)
	if err != nil || len(addrs) == 0 {
		t.Fatalf("this machine's host name %q does not resolve (%v): the test needs it", name, err)
	}
	if ip := net.ParseIP(addrs[0]); ip == nil || !ip.IsLoopback() {
		t.Fatalf("host name %q resolves to %v, not to loopback where the test servers listen", name, addrs)
	}
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = net.JoinHostPort(name, u.Port())
	return u.String()
}

func TestOutboundIgnoresEnvironmentProxies(t *testing.T) {
	proxyAddr, proxied := countingProxy(t)

	t.Run("serve", func(t *testing.T) {
		const company = "c0ffee00-0000-4000-8000-0000000000e3"
		connectAddr := connectFreeAddr(t)
		redirect := "http://" + connectAddr + "/callback"
		as := oauthtest.NewServer(t, oauthtest.Options{RedirectURIs: []string{redirect}, AccessTTL: 30 * time.Second})
		as.SetConsent(oauthtest.Consent{CompanyID: company})
		dir := t.TempDir()
		_, encKey := cliKey(43)
		env := append([]string{
			"PATH=" + os.Getenv("PATH"),
			"PLEO_PROXY_STORE=file://" + filepath.Join(dir, "credentials.json"),
			"PLEO_PROXY_ENCRYPTION_KEY=" + encKey,
			"PLEO_PROXY_UPSTREAM_URL=" + hostNamed(t, as.URL()),
			"PLEO_PROXY_LISTEN_ADDR=127.0.0.1:0",
			"PLEO_PROXY_ADMIN_ADDR=127.0.0.1:0",
			"PLEO_PROXY_CONNECT_ADDR=" + connectAddr,
			"PLEO_PROXY_OAUTH_CLIENT_ID=" + as.ClientID(),
			"PLEO_PROXY_OAUTH_CLIENT_SECRET=" + as.ClientSecret(),
			"PLEO_PROXY_OAUTH_TOKEN_URL=" + hostNamed(t, as.TokenURL()),
			"PLEO_PROXY_OAUTH_AUTHORIZE_URL=" + as.AuthorizeURL(),
			"PLEO_PROXY_OAUTH_REDIRECT_URL=" + redirect,
			"PLEO_PROXY_OAUTH_SCOPES=export-jobs:read",
		}, proxyEnv(proxyAddr)...)
		s := startConnectSidecar(t, env)

		// The consent flow: code exchange and /v1/installations/me.
		status, body := connectGet(t, connectBrowser(t), mintLink(t, env, "erp-proxy"))
		if status != http.StatusOK || !strings.Contains(body, company) {
			t.Fatalf("consent flow: %d %s\n%s", status, body, s.log())
		}
		// An upstream call, which refreshes: its fresh token is revoked at the server, so the
		// upstream's 401 makes the sidecar refresh and retry.
		as.RevokeAccessTokens(company)
		status, body = connectGet(t, &http.Client{Timeout: 20 * time.Second}, "http://"+s.data+"/v1/export-jobs", "X-Tenant-Id", "erp-proxy")
		var echo oauthtest.Echo
		if status != http.StatusOK || json.Unmarshal([]byte(body), &echo) != nil || echo.CompanyID != company {
			t.Fatalf("proxied request: %d %s\n%s", status, body, s.log())
		}
		st := as.Stats()
		if st.CodeExchanges != 1 || st.RefreshCalls < 1 || st.APICalls < 2 {
			t.Fatalf("the authorisation server saw %+v, want a code exchange, a refresh and the API calls", st)
		}
		if n := proxied.Load(); n != 0 {
			t.Fatalf("the proxy from the environment got %d connections", n)
		}
	})

	t.Run("credentials put --discover-company", func(t *testing.T) {
		const apiKey = "discovered-through-no-proxy-0123456789"
		company := cliCompany(9)
		mock := mockpleo.New(mockpleo.Options{})
		mock.AddAPIKey(company, apiKey, time.Time{})
		upstream := httptest.NewServer(mock.Handler())
		defer upstream.Close()
		env, _ := cliEnv(t, "")
		env = append(append(env, "PLEO_PROXY_UPSTREAM_URL="+hostNamed(t, upstream.URL)), proxyEnv(proxyAddr)...)
		out, stderr, code := runCLI(t, env, apiKey, "credentials", "put", "--discover-company", "--type", "integrated_api_key")
		if code != 0 || !strings.Contains(out, company) {
			t.Fatalf("exit %d: %s %s", code, out, stderr)
		}
		if n := proxied.Load(); n != 0 {
			t.Fatalf("the proxy from the environment got %d connections", n)
		}
	})
}
