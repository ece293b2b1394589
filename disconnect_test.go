package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/oauthtest"
)

// TestCLIDisconnect drives `credentials disconnect` through the binary against the strict
// fosite server: a Pleo failure keeps the credential and exits non-zero; a success revokes the
// installation (the stored refresh token stops working at Pleo) and removes the credential;
// --tenant finds the company; --force removes what Pleo would not confirm.
func TestCLIDisconnect(t *testing.T) {
	ctx := context.Background()
	as := oauthtest.NewServer(t, oauthtest.Options{})
	target, _ := url.Parse(as.URL())
	var failDelete atomic.Bool
	var deletes atomic.Int32
	rp := httputil.NewSingleHostReverseProxy(target)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodDelete {
			deletes.Add(1)
			if failDelete.Load() {
				http.Error(w, "pleo is having a bad day", http.StatusInternalServerError)
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	defer upstream.Close()

	companyA, companyB := cliCompany(21), cliCompany(22)
	var records []map[string]any
	refresh := map[string]string{}
	for _, c := range []struct{ id, tenant string }{{companyA, "erp-a"}, {companyB, "erp-b"}} {
		tok, err := as.Grant(ctx, c.id)
		if err != nil {
			t.Fatal(err)
		}
		refresh[c.id] = tok.RefreshToken
		records = append(records, map[string]any{"company_id": c.id, "tenant_id": c.tenant, "type": "oauth2",
			"access_token": tok.AccessToken, "refresh_token": tok.RefreshToken, "expires_at": tok.Expiry.UTC().Format(time.RFC3339)})
	}
	doc, _ := json.Marshal(map[string]any{"credentials": records})
	const eventsKey = "cli-events-signing-key-0123456789abcdef"
	sink := newEventSink(t, eventsKey, 0)
	env, _ := cliEnv(t, "")
	env = append(env, "PLEO_PROXY_EVENTS_URL="+sink.srv.URL, "PLEO_PROXY_EVENTS_KEY="+eventsKey,
		"PLEO_PROXY_UPSTREAM_URL="+upstream.URL, "PLEO_PROXY_OAUTH_CLIENT_ID="+as.ClientID(),
		"PLEO_PROXY_OAUTH_CLIENT_SECRET="+as.ClientSecret(), "PLEO_PROXY_OAUTH_TOKEN_URL="+as.TokenURL())
	mustCLI(t, env, string(doc), "credentials", "import", "-")

	stillWorks := func(id string) bool {
		_, err := as.OAuth2Config().TokenSource(ctx, &oauth2.Token{RefreshToken: refresh[id], Expiry: time.Now().Add(-time.Hour)}).Token()
		return err == nil
	}

	// Pleo answers 500: nothing removed, exit 1, the reason and the way out named.
	failDelete.Store(true)
	out, stderr, code := runCLI(t, env, "", "credentials", "disconnect", "--company", companyA)
	if code != 1 || !strings.Contains(stderr, "500") || !strings.Contains(stderr, "--force") {
		t.Fatalf("disconnect during a Pleo failure: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	if n := len(cliList(t, env)); n != 2 {
		t.Fatalf("after a failed disconnect the store has %d credentials, want 2", n)
	}

	// Pleo answers: revoked and removed, found by tenant.
	failDelete.Store(false)
	out = mustCLI(t, env, "", "credentials", "disconnect", "--tenant", "erp-a")
	if !strings.Contains(out, "revoked at Pleo") || !strings.Contains(out, companyA) {
		t.Errorf("disconnect printed %q", out)
	}
	list := cliList(t, env)
	if len(list) != 1 || list[0]["company_id"] != companyB {
		t.Fatalf("after disconnect: %v, want only %s", list, companyB)
	}
	if stillWorks(companyA) {
		t.Error("company A's refresh token still works at Pleo after disconnect")
	}
	if !stillWorks(companyB) {
		t.Error("company B's grant was revoked too")
	}

	// --force removes what Pleo did not confirm, and says so.
	failDelete.Store(true)
	out = mustCLI(t, env, "", "credentials", "disconnect", "--company", companyB, "--force")
	if !strings.Contains(out, "did not confirm") || !strings.Contains(out, "may still honour") {
		t.Errorf("forced disconnect printed %q", out)
	}
	if n := len(cliList(t, env)); n != 0 {
		t.Fatalf("after a forced disconnect the store has %d credentials", n)
	}
	if got := deletes.Load(); got != 3 {
		t.Errorf("Pleo saw %d DELETE requests, want 3", got)
	}
	for _, s := range []string{refresh[companyA], refresh[companyB], as.ClientSecret()} {
		if strings.Contains(out+stderr, s) {
			t.Fatal("a secret was printed")
		}
	}

	// One signed event per credential removed; none for the one kept.
	if got, want := strings.Join(sink.summary(), ","), "disconnected "+companyA+",disconnected "+companyB; got != want {
		t.Errorf("events %s, want %s", got, want)
	}

	// Bad command lines.
	for _, args := range [][]string{{}, {"--company", companyA, "--tenant", "x"}, {"--company", "nope"}} {
		if _, _, code := runCLI(t, env, "", append([]string{"credentials", "disconnect"}, args...)...); code != 2 {
			t.Errorf("disconnect %v: exit %d, want 2", args, code)
		}
	}
}
