package main

// The consent-phishing attack of issue 16, scripted against the built binary and the mock
// Pleo (whose consent grants the company named by mock_company_id): an attacker's link, or a
// link for the attacker's tenant finished by another company's admin, binds nothing.

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/mockpleo"
)

const (
	victimCompany = "c0ffee00-0000-4000-8000-0000000000b1"
	otherCompany  = "c0ffee00-0000-4000-8000-0000000000d1"
)

// attackEnv is the environment of one replica: the mock as Pleo, a file store, connectAddr
// as the connect listener, and connectKey as the link key.
func attackEnv(t *testing.T, mockURL, connectAddr, connectKey string) []string {
	return []string{
		"PATH=" + os.Getenv("PATH"),
		"PLEO_PROXY_STORE=file://" + filepath.Join(t.TempDir(), "credentials.json"),
		"PLEO_PROXY_CONNECT_KEY=" + connectKey,
		"PLEO_PROXY_UPSTREAM_URL=" + mockURL,
		"PLEO_PROXY_LISTEN_ADDR=127.0.0.1:0",
		"PLEO_PROXY_ADMIN_ADDR=127.0.0.1:0",
		"PLEO_PROXY_ADMIN_TOKEN=attack-admin-token",
		"PLEO_PROXY_CONNECT_ADDR=" + connectAddr,
		"PLEO_PROXY_OAUTH_CLIENT_ID=" + mockpleo.DefaultClientID,
		"PLEO_PROXY_OAUTH_CLIENT_SECRET=" + mockpleo.DefaultClientSecret,
		"PLEO_PROXY_OAUTH_TOKEN_URL=" + mockURL + "/oauth/token",
		"PLEO_PROXY_OAUTH_AUTHORIZE_URL=" + mockURL + "/oauth/authorize",
		"PLEO_PROXY_OAUTH_REDIRECT_URL=http://" + connectAddr + "/callback",
		"PLEO_PROXY_OAUTH_SCOPES=export-jobs:read",
		"PLEO_PROXY_SHUTDOWN_TIMEOUT=5s",
	}
}

// consentAs opens link in browser and, when it starts a flow, consents at the mock as the
// admin of company; it returns the final answer.
func consentAs(t *testing.T, browser *http.Client, link, company string) (int, string, http.Header) {
	t.Helper()
	first := *browser
	first.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := first.Get(link)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		return resp.StatusCode, string(body), resp.Header
	}
	authorize, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	q := authorize.Query()
	q.Set("mock_company_id", company)
	authorize.RawQuery = q.Encode()
	status, b := connectGet(t, browser, authorize.String())
	return status, b, nil
}

// proxiedTenant sends a request for tenant through the data listener.
func proxiedTenant(t *testing.T, data, tenant string) (int, string) {
	t.Helper()
	return connectGet(t, &http.Client{Timeout: 20 * time.Second}, "http://"+data+"/v1/export-jobs", "X-Tenant-Id", tenant)
}

func adminLink(t *testing.T, admin, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+admin+"/connect-links", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer attack-admin-token")
	req.Header.Set("Content-Type", "application/json")
	resp, err := faultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

func TestConsentAttackRefused(t *testing.T) {
	mock := mockpleo.New(mockpleo.Options{})
	mockSrv := httptest.NewServer(mock.Handler())
	t.Cleanup(mockSrv.Close)
	_, key := cliKey(77)
	_, otherKey := cliKey(78)
	addr1, addr2, addr3 := connectFreeAddr(t), connectFreeAddr(t), connectFreeAddr(t)
	mock.SetRedirectURIs("http://"+addr1+"/callback", "http://"+addr2+"/callback", "http://"+addr3+"/callback")
	env1 := attackEnv(t, mockSrv.URL, addr1, key)
	s1 := startConnectSidecar(t, env1)

	// The victim's company is connected to the victim's tenant, through a link its ERP minted.
	if status, body, _ := consentAs(t, connectBrowser(t), mintLink(t, env1, "victim-tenant"), victimCompany); status != http.StatusOK {
		t.Fatalf("victim's own connect: %d %s\n%s", status, body, s1.log())
	}

	// 1. The attack as first reported: an unsigned link for the attacker's tenant starts
	// nothing (no cookie, no redirect).
	status, body, header := consentAs(t, connectBrowser(t), "http://"+addr1+"/connect?tenant_id=attacker-tenant", victimCompany)
	if status != http.StatusForbidden || len(header.Values("Set-Cookie")) != 0 || !strings.Contains(body, "not issued by your application") {
		t.Fatalf("unsigned link: %d %v %s", status, header, body)
	}

	// 2. The attacker holds a valid link for their own tenant (any customer of the ERP can get
	// one) and has the victim's admin finish it: 409 naming both tenants, nothing moves.
	attackerLink := mintLink(t, env1, "attacker-tenant")
	status, body, _ = consentAs(t, connectBrowser(t), attackerLink, victimCompany)
	if status != http.StatusConflict || !strings.Contains(body, "victim-tenant") || !strings.Contains(body, "attacker-tenant") {
		t.Fatalf("signed attacker link finished by the victim: %d %s", status, body)
	}
	if status, body := proxiedTenant(t, s1.data, "victim-tenant"); status != http.StatusOK || !strings.Contains(body, victimCompany) {
		t.Fatalf("victim-tenant after the attack: %d %s", status, body)
	}
	if status, body := proxiedTenant(t, s1.data, "attacker-tenant"); status != http.StatusForbidden || !strings.Contains(body, "company_unknown") {
		t.Fatalf("attacker-tenant after the attack: %d %s", status, body)
	}

	// 3. Tampered links: each parameter altered, and one added.
	u, _ := url.Parse(attackerLink)
	exp, _ := strconv.ParseInt(u.Query().Get("expires"), 10, 64)
	for name, edit := range map[string]func(url.Values){
		"tenant":  func(q url.Values) { q.Set("tenant_id", "victim-tenant") },
		"expires": func(q url.Values) { q.Set("expires", strconv.FormatInt(exp+3600, 10)) },
		"nonce":   func(q url.Values) { q.Set("nonce", "AAAAAAAAAAAAAAAAAAAAAA") },
		"sig":     func(q url.Values) { q.Set("sig", strings.Repeat("A", 43)) },
		"added":   func(q url.Values) { q.Set("prompt", "none") },
	} {
		q := u.Query()
		edit(q)
		tampered := *u
		tampered.RawQuery = q.Encode()
		if status, body, _ := consentAs(t, connectBrowser(t), tampered.String(), otherCompany); status != http.StatusForbidden {
			t.Errorf("%s tampered: %d %s", name, status, body)
		}
	}

	// 4. An expired link (the shortest lifetime, then wait for the clock to pass it).
	short := mintLink(t, env1, "another-tenant", "--ttl", "1s")
	noFollow := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	waitFor(t, func() bool { // 302 (a flow starts, never finished here) until it expires
		status, body := connectGet(t, noFollow, short)
		return status == http.StatusForbidden && strings.Contains(body, "expired")
	})

	// 5. A link from the admin endpoint works for a fresh tenant and company.
	code, minted := adminLink(t, s1.admin, `{"tenant_id": "other-tenant", "ttl": "10m"}`)
	link, _ := minted["url"].(string)
	if code != http.StatusOK || !strings.HasPrefix(link, "http://"+addr1+"/connect?") {
		t.Fatalf("POST /connect-links: %d %v", code, minted)
	}
	if status, body, _ := consentAs(t, connectBrowser(t), link, otherCompany); status != http.StatusOK {
		t.Fatalf("admin-minted link: %d %s", status, body)
	}
	if code, _ := adminLink(t, s1.admin, `{"tenant_id": ""}`); code != http.StatusBadRequest {
		t.Fatalf("empty tenant: %d", code)
	}

	// 6. Replicas: the same key accepts replica 1's link; another key refuses it.
	s2 := startConnectSidecar(t, attackEnv(t, mockSrv.URL, addr2, key))
	s3 := startConnectSidecar(t, attackEnv(t, mockSrv.URL, addr3, otherKey))
	_, minted = adminLink(t, s1.admin, `{"tenant_id": "replica-tenant"}`)
	query := mustParse(t, minted["url"].(string)).RawQuery
	if status, body, _ := consentAs(t, connectBrowser(t), "http://"+addr2+"/connect?"+query, otherCompany); status != http.StatusOK {
		t.Fatalf("replica 1's link on replica 2: %d %s\n%s", status, body, s2.log())
	}
	if status, body := proxiedTenant(t, s2.data, "replica-tenant"); status != http.StatusOK || !strings.Contains(body, otherCompany) {
		t.Fatalf("replica 2 after the flow: %d %s", status, body)
	}
	if status, _, _ := consentAs(t, connectBrowser(t), "http://"+addr3+"/connect?"+query, otherCompany); status != http.StatusForbidden {
		t.Fatalf("replica 1's link under another key: %d", status)
	}

	_, metricsText := connectGet(t, &http.Client{Timeout: 10 * time.Second}, "http://"+s1.admin+"/metrics")
	for _, want := range []string{`pleo_proxy_connect_failures_total{reason="tenant_conflict"} 1`, `pleo_proxy_connects_total{result="completed"} 2`} {
		if !strings.Contains(metricsText, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if !strings.Contains(metricsText, `pleo_proxy_connects_total{result="link_refused"}`) ||
		strings.Contains(metricsText, `pleo_proxy_connects_total{result="link_refused"} 0`) {
		t.Error("refused links not counted")
	}
	for _, s := range []*connectSidecar{s1, s2, s3} {
		s.stop(t)
	}
	if logs := s1.log(); !strings.Contains(logs, "ERR") || !strings.Contains(logs, "tenant_conflict") {
		t.Errorf("no error line for the conflict:\n%s", logs)
	}
}

// A connect listener with no way to sign links does not start, naming the variable; with
// PLEO_PROXY_CONNECT_UNSIGNED_LINKS=true it starts, warns, and takes tenant_id as before.
func TestConnectListenerNeedsALinkKey(t *testing.T) {
	addr := connectFreeAddr(t)
	env := attackEnv(t, "http://127.0.0.1:1", addr, "")
	env = slicesDelete(env, "PLEO_PROXY_CONNECT_KEY=")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t), "serve")
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "PLEO_PROXY_CONNECT_KEY") {
		t.Fatalf("started without a key: %v %s", err, out)
	}

	mock := mockpleo.New(mockpleo.Options{})
	mockSrv := httptest.NewServer(mock.Handler())
	t.Cleanup(mockSrv.Close)
	mock.SetRedirectURIs("http://" + addr + "/callback")
	env = slicesDelete(attackEnv(t, mockSrv.URL, addr, ""), "PLEO_PROXY_CONNECT_KEY=")
	s := startConnectSidecar(t, append(env, "PLEO_PROXY_CONNECT_UNSIGNED_LINKS=true"))
	if status, body, _ := consentAs(t, connectBrowser(t), "http://"+addr+"/connect?tenant_id=ingress-tenant", otherCompany); status != http.StatusOK {
		t.Fatalf("unsigned link with CONNECT_UNSIGNED_LINKS: %d %s", status, body)
	}
	s.stop(t)
	if !strings.Contains(s.log(), "PLEO_PROXY_CONNECT_UNSIGNED_LINKS=true") || !strings.Contains(s.log(), "WRN") {
		t.Fatalf("no start-up warning:\n%s", s.log())
	}
}

func mustParse(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// slicesDelete drops the entries that start with prefix.
func slicesDelete(env []string, prefix string) []string {
	out := env[:0:0]
	for _, e := range env {
		if !strings.HasPrefix(e, prefix) {
			out = append(out, e)
		}
	}
	return out
}

// A company whose refresh token Pleo rejects gets 401 reauthorization_required with a
// reconnect_url; that link, finished by the same company's admin, reconnects it, and it cannot
// bind the tenant to another company.
func TestReconnectURLReconnects(t *testing.T) {
	const company = "c0ffee00-0000-4000-8000-0000000000e1"
	mock := mockpleo.New(mockpleo.Options{})
	mockSrv := httptest.NewServer(mock.Handler())
	t.Cleanup(mockSrv.Close)
	_, key := cliKey(79)
	addr := connectFreeAddr(t)
	mock.SetRedirectURIs("http://" + addr + "/callback")
	env := attackEnv(t, mockSrv.URL, addr, key)

	// A credential whose refresh token is already spent at the mock.
	_, refresh, _ := mock.AddOAuthCompany(company, "export-jobs:read")
	oc := oauth2.Config{ClientID: mockpleo.DefaultClientID, ClientSecret: mockpleo.DefaultClientSecret,
		Endpoint: oauth2.Endpoint{TokenURL: mockSrv.URL + "/oauth/token", AuthStyle: oauth2.AuthStyleInHeader}}
	if _, err := oc.TokenSource(context.Background(), &oauth2.Token{RefreshToken: refresh}).Token(); err != nil {
		t.Fatal(err)
	}
	doc := `{"credentials": [{"company_id": "` + company + `", "tenant_id": "reauth-tenant", "type": "oauth2", "refresh_token": "` + refresh + `"}]}`
	mustCLI(t, env, doc, "credentials", "import", "-")
	s := startConnectSidecar(t, env)

	status, body := proxiedTenant(t, s.data, "reauth-tenant")
	var problem struct {
		Code         string `json:"code"`
		ReconnectURL string `json:"reconnect_url"`
	}
	if status != http.StatusUnauthorized || json.Unmarshal([]byte(body), &problem) != nil || problem.Code != "reauthorization_required" {
		t.Fatalf("before reconnecting: %d %s", status, body)
	}
	link := mustParse(t, problem.ReconnectURL)
	if link.Host != addr || link.Path != "/connect" || link.Query().Get("tenant_id") != "reauth-tenant" || link.Query().Get("sig") == "" {
		t.Fatalf("reconnect_url %s", problem.ReconnectURL)
	}
	if status, body, _ := consentAs(t, connectBrowser(t), problem.ReconnectURL, company); status != http.StatusOK {
		t.Fatalf("reconnect through reconnect_url: %d %s\n%s", status, body, s.log())
	}
	if status, body := proxiedTenant(t, s.data, "reauth-tenant"); status != http.StatusOK || !strings.Contains(body, company) {
		t.Fatalf("after reconnecting: %d %s", status, body)
	}
	// The same link, finished by another company's admin, binds nothing.
	if status, body, _ := consentAs(t, connectBrowser(t), problem.ReconnectURL, otherCompany); status != http.StatusConflict {
		t.Fatalf("reconnect_url used by another company: %d %s", status, body)
	}
	if status, body := proxiedTenant(t, s.data, "reauth-tenant"); status != http.StatusOK || !strings.Contains(body, company) {
		t.Fatalf("after the other company's attempt: %d %s", status, body)
	}
	s.stop(t)
}
