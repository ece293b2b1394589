package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/config"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/connect"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/events"
)

func TestConnectLinkCommand(t *testing.T) {
	encKey, encKeyB64 := cliKey(5)
	base := []string{
		"PLEO_PROXY_ENCRYPTION_KEY=" + encKeyB64,
		"PLEO_PROXY_OAUTH_REDIRECT_URL=https://connect.example.com/pleo/callback",
	}
	runLink := func(environ []string, args ...string) (string, string, error) {
		var out, errOut bytes.Buffer
		err := run(context.Background(), append([]string{"connect-link"}, args...), environ, strings.NewReader(""), &out, &errOut)
		return out.String(), errOut.String(), err
	}

	out, errOut, err := runLink(base, "--tenant", "erp 42", "--ttl", "2h")
	if err != nil {
		t.Fatalf("connect-link: %v %s", err, errOut)
	}
	u, err := url.Parse(strings.TrimSpace(out))
	if err != nil || u.Scheme != "https" || u.Host != "connect.example.com" || u.Path != connect.ConnectPath {
		t.Fatalf("printed %q", out)
	}
	// Signed under the key derived from the encryption key, as serve verifies.
	derived, _ := connect.DeriveLinkKey(encKey)
	links, _ := connect.NewLinks([][]byte{derived}, nil)
	if tenant, err := links.Verify(u.RawQuery); err != nil || tenant != "erp 42" {
		t.Fatalf("verify: %q %v", tenant, err)
	}
	exp := u.Query().Get("expires")
	if want := time.Now().Add(2 * time.Hour).Unix(); absDiff(atoi(t, exp), want) > 5 {
		t.Fatalf("expires %s, want about %d", exp, want)
	}
	if !strings.Contains(errOut, "valid until") {
		t.Fatalf("stderr %q", errOut)
	}

	// PLEO_PROXY_CONNECT_KEY wins over the derivation.
	_, ckB64 := cliKey(6)
	out, _, err = runLink(append([]string{"PLEO_PROXY_CONNECT_KEY=" + ckB64}, base...), "--tenant", "t")
	ck, _ := cliKey(6)
	own, _ := connect.NewLinks([][]byte{ck}, nil)
	if _, verr := own.Verify(mustParse(t, strings.TrimSpace(out)).RawQuery); err != nil || verr != nil {
		t.Fatalf("with CONNECT_KEY: %v %v", err, verr)
	}
	// Default lifetime: 1h.
	if exp := atoi(t, mustParse(t, strings.TrimSpace(out)).Query().Get("expires")); absDiff(exp, time.Now().Add(time.Hour).Unix()) > 5 {
		t.Fatalf("default ttl: expires %d", exp)
	}

	for _, tc := range []struct {
		name    string
		environ []string
		args    []string
		code    int
		want    string
	}{
		{"no tenant", base, nil, 2, "--tenant is required"},
		{"bad tenant", base, []string{"--tenant", "a\nb"}, 2, "control"},
		{"ttl too long", base, []string{"--tenant", "t", "--ttl", "169h"}, 2, "longer than"},
		{"ttl zero", base, []string{"--tenant", "t", "--ttl", "0s"}, 2, "not positive"},
		{"ttl not a duration", base, []string{"--tenant", "t", "--ttl", "soon"}, 2, "invalid value"},
		{"argument", base, []string{"--tenant", "t", "extra"}, 2, "no arguments"},
		{"no key", base[1:], []string{"--tenant", "t"}, 1, "PLEO_PROXY_CONNECT_KEY"},
		{"no redirect URL", base[:1], []string{"--tenant", "t"}, 1, "PLEO_PROXY_OAUTH_REDIRECT_URL"},
		{"bad config", append([]string{"PLEO_PROXY_CONNECT_KEY=short"}, base...), []string{"--tenant", "t"}, 1, "PLEO_PROXY_CONNECT_KEY"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, _, err := runLink(tc.environ, tc.args...)
			if exitCode(err) != tc.code || err == nil || !strings.Contains(err.Error(), tc.want) || out != "" {
				t.Fatalf("exit %d, %v, out %q", exitCode(err), err, out)
			}
		})
	}
}

func atoi(t *testing.T, s string) int64 {
	t.Helper()
	var n int64
	for _, c := range s {
		if c < '0' || c > '9' {
			t.Fatalf("%q is not a number", s)
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

func absDiff(a, b int64) int64 {
	if a > b {
		return a - b
	}
	return b - a
}

// serve wires the events' reconnect_url to the connect links: a reauthorization_required
// event for a company with a tenant carries a link that verifies for that tenant.
func TestEventsCarryReconnectURL(t *testing.T) {
	got := make(chan map[string]any, 4)
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ev map[string]any
		_ = json.NewDecoder(r.Body).Decode(&ev)
		got <- ev
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(sink.Close)
	ck, _ := cliKey(9)
	cfg := &config.Config{
		EventsURL:        mustParse(t, sink.URL),
		EventsKey:        credentials.Secret(strings.Repeat("k", 32)),
		ConnectAddr:      "127.0.0.1:0",
		ConnectKeys:      [][]byte{ck},
		OAuthRedirectURL: mustParse(t, "https://connect.example.com/callback"),
	}
	links, err := connectLinksOf(cfg, slog.New(slog.DiscardHandler))
	if err != nil || links == nil {
		t.Fatalf("links: %v", err)
	}
	n, err := newNotifier(cfg, credentials.NewMemoryStore(), links, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	n.Notify(credentials.Credential{CompanyID: "5a1c0000-0000-4000-8000-000000000001", TenantID: "erp-9", Type: credentials.OAuth2}, events.ReauthorizationRequired)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	ev := <-got
	raw, _ := ev["reconnect_url"].(string)
	u := mustParse(t, raw)
	if tenant, err := links.links.Verify(u.RawQuery); err != nil || tenant != "erp-9" || u.Host != "connect.example.com" {
		t.Fatalf("reconnect_url %q: %q %v", raw, tenant, err)
	}
	if exp := atoi(t, u.Query().Get("expires")); absDiff(exp, time.Now().Add(eventLinkTTL).Unix()) > 5 {
		t.Fatalf("event link expires %d", exp)
	}
}
