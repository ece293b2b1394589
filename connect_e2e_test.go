package main

// The consent flow through the built binary: the connect listener, the fosite authorisation
// server of internal/oauthtest (and its resource server as the upstream), the file store, and
// a proxied request with the credential the flow stored.

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/oauthtest"
)

// connectSidecar is a running `pleo-auth-proxy serve`.
type connectSidecar struct {
	cmd                  *exec.Cmd
	stdout               *connectOutput
	data, admin, connect string
	mu                   sync.Mutex
	logged               []string
	done                 chan struct{}
}

type connectOutput struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *connectOutput) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *connectOutput) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func startConnectSidecar(t *testing.T, env []string, args ...string) *connectSidecar {
	t.Helper()
	s := &connectSidecar{cmd: exec.Command(binary(t), append([]string{"serve"}, args...)...), stdout: &connectOutput{}, done: make(chan struct{})}
	s.cmd.Env = append(env, "PLEO_PROXY_LOG_FORMAT=text")
	s.cmd.Stdout = s.stdout
	pipe, err := s.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.cmd.Process.Kill(); <-s.done })
	started := make(chan []string, 1)
	re := regexp.MustCompile(`listen=(\S+) admin=(\S+) connect=(\S+)`)
	go func() {
		defer close(s.done)
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			s.mu.Lock()
			s.logged = append(s.logged, sc.Text())
			s.mu.Unlock()
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				started <- m[1:]
			}
		}
	}()
	select {
	case m := <-started:
		s.data, s.admin, s.connect = m[0], m[1], m[2]
	case <-s.done:
		t.Fatalf("sidecar exited: %s", s.log())
	case <-time.After(15 * time.Second):
		t.Fatalf("no start line: %s", s.log())
	}
	return s
}

func (s *connectSidecar) log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.logged, "\n")
}

// stop sends SIGTERM and waits for a clean exit.
func (s *connectSidecar) stop(t *testing.T) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.done:
	case <-time.After(15 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
	if err := s.cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, s.log())
	}
}

func connectBrowser(t *testing.T) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar, Timeout: 20 * time.Second}
}

func connectGet(t *testing.T, c *http.Client, u string, header ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// connectFreeAddr returns a loopback address with a port free a moment ago (the redirect
// URI must be registered with the authorisation server before the sidecar starts).
func connectFreeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestConnectEndToEnd(t *testing.T) {
	const company = "c0ffee00-0000-4000-8000-0000000000e2"
	connectAddr := connectFreeAddr(t)
	redirect := "http://" + connectAddr + "/callback"
	as := oauthtest.NewServer(t, oauthtest.Options{RedirectURIs: []string{redirect}})
	as.SetConsent(oauthtest.Consent{CompanyID: company})
	_, encKey := cliKey(42)
	dir := t.TempDir()
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"PLEO_PROXY_STORE=file://" + filepath.Join(dir, "credentials.json"),
		"PLEO_PROXY_ENCRYPTION_KEY=" + encKey,
		"PLEO_PROXY_UPSTREAM_URL=" + as.URL(),
		"PLEO_PROXY_LISTEN_ADDR=127.0.0.1:0",
		"PLEO_PROXY_ADMIN_ADDR=127.0.0.1:0",
		"PLEO_PROXY_CONNECT_ADDR=" + connectAddr,
		"PLEO_PROXY_OAUTH_CLIENT_ID=" + as.ClientID(),
		"PLEO_PROXY_OAUTH_CLIENT_SECRET=" + as.ClientSecret(),
		"PLEO_PROXY_OAUTH_TOKEN_URL=" + as.TokenURL(),
		"PLEO_PROXY_OAUTH_AUTHORIZE_URL=" + as.AuthorizeURL(),
		"PLEO_PROXY_OAUTH_REDIRECT_URL=" + redirect,
		"PLEO_PROXY_OAUTH_SCOPES=export-jobs:read export-items:read",
		"PLEO_PROXY_SHUTDOWN_TIMEOUT=10s",
	}
	s := startConnectSidecar(t, env)
	if s.connect != connectAddr {
		t.Fatalf("connect listener on %s, want %s", s.connect, connectAddr)
	}

	browser := connectBrowser(t)
	plainClient := &http.Client{Timeout: 20 * time.Second} // no cookies: the data and admin listeners
	// The link comes from the connect-link command, under the key derived from the
	// encryption key the sidecar holds too.
	link := mintLink(t, env, "erp-e2e")
	if !strings.HasPrefix(link, "http://"+connectAddr+"/connect?") {
		t.Fatalf("link %s is not on the connect listener", link)
	}
	status, body := connectGet(t, browser, link)
	if status != http.StatusOK || !strings.Contains(body, "Connected") || !strings.Contains(body, company) {
		t.Fatalf("consent flow: %d %s\n%s", status, body, s.log())
	}
	status, body = connectGet(t, plainClient, "http://"+s.data+"/v1/export-jobs", "X-Tenant-Id", "erp-e2e")
	var echo oauthtest.Echo
	if status != http.StatusOK || json.Unmarshal([]byte(body), &echo) != nil || echo.CompanyID != company {
		t.Fatalf("proxied request: %d %s", status, body)
	}
	// Another path of the connect listener is nothing; the data listener has no /connect.
	if status, _ := connectGet(t, plainClient, "http://"+connectAddr+"/v1/export-jobs"); status != http.StatusNotFound {
		t.Fatalf("connect listener served a data path: %d", status)
	}
	_, metricsText := connectGet(t, plainClient, "http://"+s.admin+"/metrics")
	for _, want := range []string{`pleo_proxy_connects_total{result="started"} 1`, `pleo_proxy_connects_total{result="completed"} 1`} {
		if !strings.Contains(metricsText, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	s.stop(t)

	// The stored credential (encrypted at rest) and the log: no token in the log.
	k, _ := cliKey(42)
	sealer, _ := credentials.NewSealer([][]byte{k})
	st, err := credentials.OpenFileStore(filepath.Join(dir, "credentials.json"), credentials.FileStoreOptions{Sealer: sealer, PollInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	c, err := st.Get(t.Context(), company)
	if err != nil || c.TenantID != "erp-e2e" || c.Type != credentials.OAuth2 {
		t.Fatalf("stored %v, %v", c, err)
	}
	logs := s.log()
	for _, secret := range []string{c.AccessToken.Reveal(), c.RefreshToken.Reveal(), as.ClientSecret(),
		base64.StdEncoding.EncodeToString([]byte(as.ClientID() + ":" + as.ClientSecret()))} {
		if strings.Contains(logs, secret) {
			t.Fatal("a secret reached the log")
		}
	}
	if !strings.Contains(logs, "consent flow completed") {
		t.Fatalf("no completion logged:\n%s", logs)
	}
}

// serve --dev turns the connect listener on, against the mock Pleo, which consents for a
// demo company: the printed lines work.
func TestDevConsentFlow(t *testing.T) {
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"PLEO_PROXY_LISTEN_ADDR=127.0.0.1:0",
		"PLEO_PROXY_ADMIN_ADDR=127.0.0.1:0",
		"PLEO_PROXY_CONNECT_ADDR=127.0.0.1:0",
	}
	s := startConnectSidecar(t, env, "--dev")
	printed := regexp.MustCompile(`open '(http://` + regexp.QuoteMeta(s.connect) + `/connect\?[^']+)'`)
	waitFor(t, func() bool { return printed.MatchString(s.stdout.String()) })
	start := printed.FindStringSubmatch(s.stdout.String())[1]
	if u, err := url.Parse(start); err != nil || u.Query().Get("tenant_id") != devConnectTenant || u.Query().Get("sig") == "" {
		t.Fatalf("printed link %s", start)
	}
	// The printed link is signed: an unsigned one for the same tenant is refused.
	if status, _ := connectGet(t, connectBrowser(t), "http://"+s.connect+"/connect?tenant_id="+devConnectTenant); status != http.StatusForbidden {
		t.Fatalf("unsigned link on --dev: %d", status)
	}
	status, body := connectGet(t, connectBrowser(t), start)
	if status != http.StatusOK || !strings.Contains(body, devConnectCompany) {
		t.Fatalf("dev consent flow: %d %s\n%s", status, body, s.log())
	}
	status, body = connectGet(t, &http.Client{Timeout: 20 * time.Second}, "http://"+s.data+"/v1/export-jobs", "X-Tenant-Id", devConnectTenant)
	if status != http.StatusOK || !strings.Contains(body, devConnectCompany) {
		t.Fatalf("proxied: %d %s", status, body)
	}
	s.stop(t)
}

// mintLink runs `pleo-auth-proxy connect-link --tenant T` with env and returns the link.
func mintLink(t *testing.T, env []string, tenant string, args ...string) string {
	t.Helper()
	cmd := exec.Command(binary(t), append([]string{"connect-link", "--tenant", tenant}, args...)...)
	cmd.Env = env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("connect-link: %v: %s", err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}
