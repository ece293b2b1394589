package connect

// Signed links at GET /connect, and bindings a consent never moves.

import (
	"bytes"
	"context"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
)

// noRedirects is a client that shows /connect's own answer.
var noRedirects = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// Every link that is not validly signed for now is a 403 page that starts nothing: no
// binding cookie, no redirect to Pleo, counted as link_refused.
func TestConnectRefusesInvalidLinks(t *testing.T) {
	e := newEnv(t)
	valid := mustURL(t, e.connectURL("erp-a"))
	alter := func(param, value string) string {
		return withQuery(valid, func(q url.Values) { q.Set(param, value) })
	}
	exp, _ := strconv.ParseInt(valid.Query().Get(LinkExpiresParam), 10, 64)
	otherKey, _, _ := mustLinks(t, e.clock, bytes.Repeat([]byte{1}, 32)).URL(mustURL(t, e.srv.URL), "erp-a", time.Hour)
	cases := []struct {
		name, link, want string
		advance          time.Duration
	}{
		{"unsigned, as in the attack", e.unsignedURL("attacker-tenant"), "not issued by your application", 0},
		{"tenant altered", alter(LinkTenantParam, "attacker-tenant"), "not valid", 0},
		{"expires altered", alter(LinkExpiresParam, strconv.FormatInt(exp+86400, 10)), "not valid", 0},
		{"nonce altered", alter(LinkNonceParam, "AAAAAAAAAAAAAAAAAAAAAA"), "not valid", 0},
		{"signature altered", alter(LinkSigParam, strings.Repeat("A", 43)), "not valid", 0},
		{"parameter added", withQuery(valid, func(q url.Values) { q.Set("scope", "admin") }), "not valid", 0},
		{"signed under another key", otherKey, "not valid", 0},
		{"expired", valid.String(), "expired", time.Hour},
	}
	refused := 0.0
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.advance > 0 {
				e.clock.Advance(tc.advance)
			}
			resp, err := noRedirects.Get(tc.link)
			if err != nil {
				t.Fatal(err)
			}
			r := readResult(t, resp)
			if r.status != http.StatusForbidden || !strings.Contains(r.body, tc.want) {
				t.Fatalf("%d %s", r.status, r.body)
			}
			if resp.Header.Get("Location") != "" || len(resp.Header.Values("Set-Cookie")) != 0 {
				t.Fatalf("a refused link started something: %v", resp.Header)
			}
			checkPageHeaders(t, r.header)
			refused++
			if e.connects("link_refused") != refused || e.connects("started") != 0 {
				t.Fatalf("link_refused %v, started %v", e.connects("link_refused"), e.connects("started"))
			}
		})
	}
	if s := e.as.Stats(); s.TokenCalls != 0 || len(e.stored()) != 0 {
		t.Fatalf("something reached Pleo or the store: %+v, %d stored", s, len(e.stored()))
	}
	if strings.Contains(e.log(), valid.Query().Get(LinkSigParam)) {
		t.Fatal("a link signature reached the log")
	}
}

// Every replica holding the same key accepts every replica's links; another key does not.
func TestLinkFromAnotherReplica(t *testing.T) {
	replica2 := newEnv(t) // its own handler, its own Links over testLinkKey
	replica1Links := mustLinks(t, replica2.clock, testLinkKey)
	link, _, err := replica1Links.URL(mustURL(t, replica2.srv.URL), "erp-shared", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if r := get(t, newBrowser(t), link); r.status != http.StatusOK || !strings.Contains(r.body, "Connected") {
		t.Fatalf("replica 1's link on replica 2: %d %s", r.status, r.body)
	}
	if c, err := replica2.store.Get(context.Background(), companyA); err != nil || c.TenantID != "erp-shared" {
		t.Fatalf("stored %v, %v", c, err)
	}

	otherKey := newEnv(t, func(o *Options) { o.Links = mustLinks(t, replica2.clock, bytes.Repeat([]byte{4}, 32)) })
	link, _, _ = replica1Links.URL(mustURL(t, otherKey.srv.URL), "erp-shared", time.Hour)
	if r := get(t, newBrowser(t), link); r.status != http.StatusForbidden {
		t.Fatalf("a link under another key: %d %s", r.status, r.body)
	}
}

// The attack of issue 16: a valid link for tenant A, finished by the admin of a company
// connected to tenant B, is a 409 naming both; company and tenants stay as they were.
func TestCompanyBoundToAnotherTenantIsNotMoved(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if r := get(t, newBrowser(t), e.connectURL("tenant-b")); r.status != http.StatusOK {
		t.Fatalf("first connect: %d %s", r.status, r.body)
	}
	before, _ := e.store.Get(ctx, companyA)

	r := get(t, newBrowser(t), e.connectURL("attacker-tenant"))
	if r.status != http.StatusConflict {
		t.Fatalf("moving consent: %d %s", r.status, r.body)
	}
	for _, want := range []string{"tenant-b", "attacker-tenant", companyA, "already connected to another tenant"} {
		if !strings.Contains(r.body, want) {
			t.Errorf("the page lacks %q: %s", want, r.body)
		}
	}
	after, _ := e.store.Get(ctx, companyA)
	if after.TenantID != "tenant-b" || after.Version != before.Version || after.RefreshToken != before.RefreshToken || len(e.stored()) != 1 {
		t.Fatalf("the binding changed: %v (was %v)", after, before)
	}
	if status, m := e.proxied("tenant-b"); status != http.StatusOK || m["company_id"] != companyA {
		t.Fatalf("tenant-b after the attack: %d %v", status, m)
	}
	if status, m := e.proxied("attacker-tenant"); status != http.StatusForbidden || m["code"] != "company_unknown" {
		t.Fatalf("attacker-tenant after the attack: %d %v", status, m)
	}
	if e.failures("tenant_conflict") != 1 || e.connects("completed") != 1 {
		t.Fatalf("tenant_conflict %v, completed %v", e.failures("tenant_conflict"), e.connects("completed"))
	}
	if logs := e.log(); !strings.Contains(logs, "level=ERROR") || !strings.Contains(logs, "attacker-tenant") {
		t.Fatalf("no error line: %s", logs)
	}

	// The same company reconnecting for its own tenant still works, and replaces its tokens.
	if r := get(t, newBrowser(t), e.connectURL("tenant-b")); r.status != http.StatusOK {
		t.Fatalf("reconnect: %d %s", r.status, r.body)
	}
	if c, _ := e.store.Get(ctx, companyA); c.Version <= before.Version || c.RefreshToken == before.RefreshToken || c.TenantID != "tenant-b" {
		t.Fatalf("reconnect stored %v", c)
	}
}

// A company stored without a tenant (an operator's credentials put) is bound by its first
// consent.
func TestCompanyWithoutTenantIsBound(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.store.PutAll(ctx, []credentials.Credential{{CompanyID: companyA, Type: credentials.IntegratedAPIKey, APIKey: "key-a"}}, false); err != nil {
		t.Fatal(err)
	}
	if r := get(t, newBrowser(t), e.connectURL("erp-new")); r.status != http.StatusOK {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if c, _ := e.store.Get(ctx, companyA); c.TenantID != "erp-new" || c.Type != credentials.OAuth2 {
		t.Fatalf("stored %v", c)
	}
}

// Two callbacks binding one new company to two tenants at once: exactly one binds, the other
// is a 409, whichever order the store sees them in.
func TestConcurrentCallbacksBindOnce(t *testing.T) {
	for round := range 5 {
		e := newEnv(t)
		tenants := []string{"erp-x", "erp-y"}
		browsers := []*http.Client{newBrowser(t), newBrowser(t)}
		callbacks := make([]string, 2)
		for i := range tenants {
			callbacks[i] = e.untilCallback(browsers[i], tenants[i]).String()
		}
		status := make([]int, 2)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range tenants {
			wg.Go(func() {
				<-start
				resp, err := browsers[i].Get(callbacks[i])
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				status[i] = resp.StatusCode
			})
		}
		close(start)
		wg.Wait()
		ok, conflict := 0, 0
		for _, s := range status {
			switch s {
			case http.StatusOK:
				ok++
			case http.StatusConflict:
				conflict++
			}
		}
		list := e.stored()
		if ok != 1 || conflict != 1 || len(list) != 1 {
			t.Fatalf("round %d: statuses %v, stored %v", round, status, list)
		}
		winner := tenants[0]
		if status[1] == http.StatusOK {
			winner = tenants[1]
		}
		if list[0].TenantID != winner {
			t.Fatalf("round %d: %s answered 200 but %s is stored", round, winner, list[0].TenantID)
		}
	}
}

// The browser-mismatch page (and every other) offers no link that starts a flow: a
// "Start again" link would hand whoever sent the consent URL a one-click retry.
func TestFailurePagesOfferNoLink(t *testing.T) {
	e := newEnv(t)
	cb := e.untilCallback(newBrowser(t), "t-1")
	r := get(t, newBrowser(t), cb.String()) // another browser
	if r.status != http.StatusBadRequest || !strings.Contains(r.body, "another browser") {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if strings.Contains(r.body, "<a ") || strings.Contains(r.body, ConnectPath) {
		t.Fatalf("the page links somewhere: %s", r.body)
	}
}

func readResult(t *testing.T, resp *http.Response) result {
	t.Helper()
	defer resp.Body.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(resp.Body); err != nil {
		t.Fatal(err)
	}
	return result{resp.StatusCode, resp.Header, b.String(), resp.Request.URL}
}
