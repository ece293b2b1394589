package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/oauthtest"
)

// sidecar is one running pleo-auth-proxy process.
type sidecar struct {
	cmd         *exec.Cmd
	data, admin string
	logs        *strings.Builder
	mu          *sync.Mutex
}

func startSidecar(t *testing.T, env []string) *sidecar {
	t.Helper()
	cmd := exec.Command(binary(t), "serve")
	cmd.Env = env
	pipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &sidecar{cmd: cmd, logs: &strings.Builder{}, mu: &sync.Mutex{}}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	started := make(chan [2]string, 1)
	go func() {
		re := regexp.MustCompile(`listen=(\S+) admin=(\S+)`)
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			line := sc.Text()
			s.mu.Lock()
			s.logs.WriteString(line + "\n")
			s.mu.Unlock()
			if m := re.FindStringSubmatch(line); m != nil {
				started <- [2]string{m[1], m[2]}
			}
		}
	}()
	select {
	case a := <-started:
		s.data, s.admin = a[0], a[1]
	case <-time.After(15 * time.Second):
		s.mu.Lock()
		defer s.mu.Unlock()
		t.Fatalf("sidecar did not start:\n%s", s.logs.String())
	}
	return s
}

func (s *sidecar) kill(t *testing.T) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = s.cmd.Wait()
}

// get sends one request for a company and returns the status.
func (s *sidecar) get(client *http.Client, company string) (int, error) {
	req, _ := http.NewRequest("GET", "http://"+s.data+"/v1/export-jobs", nil)
	req.Header.Set("X-Pleo-Company-Id", company)
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// commitWindowP99 reads pleo_proxy_token_commit_window_seconds from /metrics and returns the
// bucket bound under which 99% of commits fell, and the count.
func (s *sidecar) commitWindowP99(t *testing.T) (float64, float64) {
	t.Helper()
	resp, err := http.Get("http://" + s.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	re := regexp.MustCompile(`pleo_proxy_token_commit_window_seconds_bucket\{le="([^"]+)"\} (\S+)`)
	type bucket struct{ le, n float64 }
	var buckets []bucket
	for _, m := range re.FindAllStringSubmatch(string(body), -1) {
		le, _ := strconv.ParseFloat(m[1], 64)
		if m[1] == "+Inf" {
			le = math.Inf(1)
		}
		n, _ := strconv.ParseFloat(m[2], 64)
		buckets = append(buckets, bucket{le, n})
	}
	if len(buckets) == 0 {
		t.Fatal("no commit window histogram")
	}
	total := buckets[len(buckets)-1].n
	for _, b := range buckets {
		if b.n >= 0.99*total {
			return b.le, total
		}
	}
	return math.Inf(1), total
}

// oauthSidecarEnv is the environment of a sidecar on store whose upstream and token endpoint
// are srv: listeners on free loopback ports, info logs, then extra. It is clipped, so that
// callers appending to it get copies of their own.
func oauthSidecarEnv(srv *oauthtest.Server, store string, extra ...string) []string {
	return slices.Clip(append([]string{
		"PATH=" + os.Getenv("PATH"),
		"PLEO_PROXY_STORE=" + store,
		"PLEO_PROXY_UPSTREAM_URL=" + srv.URL(),
		"PLEO_PROXY_OAUTH_TOKEN_URL=" + srv.TokenURL(),
		"PLEO_PROXY_OAUTH_CLIENT_ID=" + srv.ClientID(),
		"PLEO_PROXY_OAUTH_CLIENT_SECRET=" + srv.ClientSecret(),
		"PLEO_PROXY_LISTEN_ADDR=127.0.0.1:0",
		"PLEO_PROXY_ADMIN_ADDR=127.0.0.1:0",
		"PLEO_PROXY_LOG_LEVEL=info",
	}, extra...))
}

// grantedCredential is an oauth2 credential for company with tokens freshly granted by srv,
// stored as expiring at expiresAt.
func grantedCredential(t *testing.T, srv *oauthtest.Server, company string, expiresAt time.Time) credentials.Credential {
	t.Helper()
	tok, err := srv.Grant(context.Background(), company)
	if err != nil {
		t.Fatal(err)
	}
	return credentials.Credential{CompanyID: company, Type: credentials.OAuth2, ExpiresAt: expiresAt,
		AccessToken: credentials.Secret(tok.AccessToken), RefreshToken: credentials.Secret(tok.RefreshToken)}
}

// TestCrashRecovery kills the sidecar with SIGKILL right after a refresh storm, and again under
// steady load with refreshes going on, restarts it on the same file store each time, and checks
// against a strict, reuse-detecting authorisation server that no refresh token was lost or
// presented twice.
func TestCrashRecovery(t *testing.T) {
	srv := oauthtest.NewServer(t, oauthtest.Options{})
	const n = 30
	companies := make([]string, n)
	var creds []credentials.Credential
	for i := range companies {
		companies[i] = fmt.Sprintf("c0a50000-0000-4000-8000-%012d", i)
		// Expired locally: the first request for each company refreshes.
		creds = append(creds, grantedCredential(t, srv, companies[i], time.Now().Add(-time.Minute)))
	}
	dir := t.TempDir()
	storePath := filepath.Join(dir, "credentials.json")
	data, err := credentials.Marshal(creds)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(storePath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	env := oauthSidecarEnv(srv, "file://"+storePath)
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 64, MaxIdleConnsPerHost: 64}, Timeout: 20 * time.Second}

	allWork := func(s *sidecar, phase string) {
		t.Helper()
		// Revoke every access token server-side, so each company must refresh with the
		// refresh token the store kept.
		for _, c := range companies {
			srv.RevokeAccessTokens(c)
		}
		for _, c := range companies {
			code, err := s.get(client, c)
			if err != nil || code != 200 {
				s.mu.Lock()
				logs := s.logs.String()
				s.mu.Unlock()
				t.Fatalf("%s: company %s: %d %v; server %+v\n%s", phase, c, code, err, srv.Stats(), logs)
			}
		}
		st := srv.Stats()
		if st.ReuseDetections != 0 || st.InvalidGrants != 0 {
			t.Fatalf("%s: %d reuse detections, %d invalid grants", phase, st.ReuseDetections, st.InvalidGrants)
		}
	}

	// Phase 1: a refresh storm (10 concurrent requests per company, all expired), then SIGKILL.
	s := startSidecar(t, env)
	var wg sync.WaitGroup
	var failures atomic.Int32
	for _, c := range companies {
		for range 10 {
			wg.Go(func() {
				if code, err := s.get(client, c); err != nil || code != 200 {
					failures.Add(1)
				}
			})
		}
	}
	wg.Wait()
	if failures.Load() != 0 {
		t.Fatalf("storm: %d requests failed", failures.Load())
	}
	if st := srv.Stats(); st.RefreshCalls != n {
		t.Fatalf("storm: %d refresh calls, want exactly %d", st.RefreshCalls, n)
	}
	p99, count := s.commitWindowP99(t)
	t.Logf("storm: %d refreshes; commit window p99 <= %gs (token answer to durable file commit)", int(count), p99)
	s.kill(t)

	s = startSidecar(t, env)
	allWork(s, "after SIGKILL following the storm")

	// Phase 2: steady load with refreshes (a server-side revocation every 150ms), then SIGKILL
	// in the middle of the load.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for w := range 8 {
		wg.Go(func() {
			for i := w; ctx.Err() == nil; i++ {
				_, _ = s.get(client, companies[i%n])
			}
		})
	}
	// Revocations stop 300ms before the kill: a process killed while a token exchange is in
	// flight (between the authorisation server rotating the token and the answer's commit)
	// loses that token — the one window the contract acknowledges, measured above.
	revokeUntil := time.Now().Add(1200 * time.Millisecond)
	wg.Go(func() {
		for i := 0; ctx.Err() == nil && time.Now().Before(revokeUntil); i++ {
			srv.RevokeAccessTokens(companies[(i*7)%n])
			time.Sleep(150 * time.Millisecond)
		}
	})
	time.Sleep(1500 * time.Millisecond)
	p99, count = s.commitWindowP99(t)
	t.Logf("steady load: %d refreshes; commit window p99 <= %gs", int(count), p99)
	s.kill(t)
	cancel()
	wg.Wait()

	s = startSidecar(t, env)
	allWork(s, "after SIGKILL under steady load")
}
