package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/mockpleo"
)

// company is one company of the fleet.
type company struct {
	id     string
	tenant string // "" for API key companies
	oauth  bool
}

// fleet is the soak's companies and their credentials file.
type fleet struct {
	path      string
	companies []company
	oauth     []int // indexes of the OAuth companies
}

// seedFleet grants every company at the mock and writes the credentials file (mode 0600).
func seedFleet(mock *mockpleo.Server, o options, path string) (*fleet, error) {
	f := &fleet{path: path}
	var creds []credentials.Credential
	now := time.Now()
	for i := range o.companies {
		c := company{id: fmt.Sprintf("50a40000-0000-4000-8000-%012d", i+1), tenant: fmt.Sprintf("soak-tenant-%d", i+1), oauth: true}
		access, refresh, exp := mock.AddOAuthCompany(c.id, "export-jobs:read")
		creds = append(creds, credentials.Credential{CompanyID: c.id, TenantID: c.tenant, Type: credentials.OAuth2,
			AccessToken: credentials.Secret(access), RefreshToken: credentials.Secret(refresh), ExpiresAt: exp, LastRefreshedAt: now})
		f.oauth = append(f.oauth, len(f.companies))
		f.companies = append(f.companies, c)
	}
	for i := range o.apiKeys {
		c := company{id: fmt.Sprintf("50a4a000-0000-4000-8000-%012d", i+1)}
		key := fmt.Sprintf("soak-api-key-%d-%d", i+1, now.UnixNano())
		mock.AddAPIKey(c.id, key, time.Time{})
		creds = append(creds, credentials.Credential{CompanyID: c.id, Type: credentials.IntegratedAPIKey, APIKey: credentials.Secret(key)})
		f.companies = append(f.companies, c)
	}
	data, err := credentials.Marshal(creds)
	if err != nil {
		return nil, err
	}
	return f, os.WriteFile(path, data, 0o600)
}

// sidecar is the running pleo-auth-proxy.
type sidecar struct {
	bin         string
	env         []string
	cmd         *exec.Cmd
	data, admin string
	logPath     string
	exited      chan struct{}
	exitErr     error
	stopOnce    sync.Once
	stopErr     error
}

// startSidecar runs `serve` on the credentials file, its log in dir/sidecar.log.
func startSidecar(ctx context.Context, o options, dir, mockURL, store string) (*sidecar, error) {
	s := &sidecar{bin: o.sidecar, logPath: dir + "/sidecar.log", exited: make(chan struct{})}
	s.env = []string{
		"PATH=" + os.Getenv("PATH"),
		"PLEO_PROXY_STORE=file://" + store,
		"PLEO_PROXY_UPSTREAM_URL=" + mockURL,
		"PLEO_PROXY_OAUTH_TOKEN_URL=" + mockURL + "/oauth/token",
		"PLEO_PROXY_OAUTH_CLIENT_ID=" + mockpleo.DefaultClientID,
		"PLEO_PROXY_OAUTH_CLIENT_SECRET=" + mockpleo.DefaultClientSecret,
		"PLEO_PROXY_LISTEN_ADDR=127.0.0.1:0",
		"PLEO_PROXY_ADMIN_ADDR=127.0.0.1:0",
		// Tokens live 5 s: refresh 2 s (less up to 0.5 s of jitter) before expiry.
		"PLEO_PROXY_REFRESH_BEFORE=2s",
		"PLEO_PROXY_MAX_REPLAY_BYTES=" + strconv.Itoa(o.maxReplay),
		"PLEO_PROXY_STORE_POLL_INTERVAL=1s",
		"PLEO_PROXY_LOG_LEVEL=info", // the default: one access line per request
		"PLEO_PROXY_LOG_FORMAT=json",
		"PLEO_PROXY_SHUTDOWN_TIMEOUT=10s",
	}
	logFile, err := os.Create(s.logPath)
	if err != nil {
		return nil, err
	}
	s.cmd = exec.Command(s.bin, "serve")
	s.cmd.Env = s.env
	pipe, err := s.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the sidecar: %w", err)
	}
	started := make(chan [2]string, 1)
	go func() {
		defer logFile.Close()
		re := regexp.MustCompile(`"listen":"([^"]+)","admin":"([^"]+)"`)
		sc := bufio.NewScanner(pipe)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			logFile.Write(append(line, '\n'))
			if m := re.FindSubmatch(line); m != nil {
				select {
				case started <- [2]string{string(m[1]), string(m[2])}:
				default:
				}
			}
		}
	}()
	go func() { s.exitErr = s.cmd.Wait(); close(s.exited) }()
	select {
	case a := <-started:
		s.data, s.admin = a[0], a[1]
		return s, nil
	case <-s.exited:
		return nil, fmt.Errorf("the sidecar exited at start: %v; log:\n%s", s.exitErr, s.logTail(20))
	case <-time.After(20 * time.Second):
		s.cmd.Process.Kill()
		return nil, fmt.Errorf("the sidecar did not start; log:\n%s", s.logTail(20))
	case <-ctx.Done():
		s.cmd.Process.Kill()
		return nil, ctx.Err()
	}
}

// stop sends SIGTERM and waits for a graceful exit (killing it after 20 s).
func (s *sidecar) stop() error {
	s.stopOnce.Do(func() {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
			s.stopErr = s.exitErr
		case <-time.After(20 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.exited
			s.stopErr = errors.New("did not stop within 20s of SIGTERM")
		}
	})
	return s.stopErr
}

func (s *sidecar) alive() bool {
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

// logTail returns the last n lines of the sidecar's log.
func (s *sidecar) logTail(n int) string {
	data, _ := os.ReadFile(s.logPath)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logSummary counts the sidecar's log lines by level and message.
func (s *sidecar) logSummary() map[string]int {
	out := map[string]int{}
	data, _ := os.ReadFile(s.logPath)
	lvl := regexp.MustCompile(`"level":"([A-Z]+)","msg":"([^"]*)"`)
	for _, line := range bytes.Split(data, []byte("\n")) {
		if m := lvl.FindSubmatch(line); m != nil {
			out[string(m[1])+" "+string(m[2])]++
		}
	}
	return out
}

// importCredential stores c with `pleo-auth-proxy credentials import -`, as an operator (or
// the consent flow in another process) would: a separate process under the file lock.
func (s *sidecar) importCredential(ctx context.Context, c credentials.Credential) error {
	data, err := credentials.Marshal([]credentials.Credential{c})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.bin, "credentials", "import", "-")
	cmd.Env = s.env
	cmd.Stdin = bytes.NewReader(data)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("credentials import: %w: %s", err, out)
	}
	return nil
}

// sample is one reading of the sidecar's admin listener.
type sample struct {
	at          time.Duration
	goroutines  float64
	rss         float64
	fds         float64
	pending     float64
	refreshes   map[string]float64 // by result
	ready       int                // /readyz status
	readyReason string
}

var adminClient = &http.Client{Timeout: 10 * time.Second}

// read takes one sample.
func (s *sidecar) read(at time.Duration) (sample, error) {
	sm := sample{at: at, refreshes: map[string]float64{}}
	resp, err := adminClient.Get("http://" + s.admin + "/metrics")
	if err != nil {
		return sm, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return sm, err
	}
	result := regexp.MustCompile(`result="([a-z_]+)"`)
	for _, line := range strings.Split(string(body), "\n") {
		name, value, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		switch {
		case name == "go_goroutines":
			sm.goroutines = v
		case name == "process_resident_memory_bytes":
			sm.rss = v
		case name == "process_open_fds":
			sm.fds = v
		case name == "pleo_proxy_pending_token_writes":
			sm.pending = v
		case strings.HasPrefix(name, "pleo_proxy_token_refreshes_total{"):
			if m := result.FindStringSubmatch(name); m != nil {
				sm.refreshes[m[1]] += v
			}
		}
	}
	resp, err = adminClient.Get("http://" + s.admin + "/readyz")
	if err != nil {
		return sm, err
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	sm.ready = resp.StatusCode
	if resp.StatusCode != http.StatusOK {
		sm.readyReason = strings.TrimSpace(string(b))
	}
	return sm, nil
}
