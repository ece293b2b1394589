package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// shutdownSidecar is a built binary serving an API-key company from a file store, with an
// httptest upstream, for the shutdown tests.
type shutdownSidecar struct {
	cmd         *exec.Cmd
	data, admin string
	exited      chan error // the result of cmd.Wait, once
	mu          sync.Mutex
	logs        []string
}

func startShutdownSidecar(t *testing.T, env ...string) *shutdownSidecar {
	t.Helper()
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello from upstream")
	}))
	t.Cleanup(upstream.Close)
	base := []string{
		"PATH=" + os.Getenv("PATH"),
		"PLEO_PROXY_STORE=file://" + filepath.Join(t.TempDir(), "credentials.json"),
		"PLEO_PROXY_UPSTREAM_URL=" + upstream.URL,
		"PLEO_PROXY_LISTEN_ADDR=127.0.0.1:0",
		"PLEO_PROXY_ADMIN_ADDR=127.0.0.1:0",
		"PLEO_PROXY_DEFAULT_COMPANY_ID=" + e2eCompany,
		"PLEO_PROXY_LOG_FORMAT=json",
	}
	doc := `{"credentials":[{"company_id":"` + e2eCompany + `","type":"integrated_api_key","api_key":"` + e2eKey + `"}]}`
	if out, stderr, code := runCLI(t, base, doc, "credentials", "import", "-"); code != 0 {
		t.Fatalf("import: exit %d: %s %s", code, out, stderr)
	}

	s := &shutdownSidecar{exited: make(chan error, 1)}
	s.cmd = exec.Command(binary(t), "serve")
	s.cmd.Env = append(base, env...)
	stderr, err := s.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = s.cmd.Process.Kill()
		<-s.exited
	})
	started := make(chan map[string]any, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			s.mu.Lock()
			s.logs = append(s.logs, sc.Text())
			s.mu.Unlock()
			var line map[string]any
			if json.Unmarshal(sc.Bytes(), &line) == nil && line["msg"] == "pleo-auth-proxy started" {
				started <- line
			}
		}
		s.exited <- s.cmd.Wait()
	}()
	select {
	case line := <-started:
		s.data, s.admin = line["listen"].(string), line["admin"].(string)
	case err := <-s.exited:
		s.exited <- err
		t.Fatalf("the sidecar exited before starting (%v):\n%s", err, s.log())
	case <-time.After(30 * time.Second):
		t.Fatalf("no start-up line:\n%s", s.log())
	}
	return s
}

func (s *shutdownSidecar) log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.logs, "\n")
}

func (s *shutdownSidecar) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// readyz returns the admin listener's /readyz status, or 0 when it does not answer.
func (s *shutdownSidecar) readyz() int {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + s.admin + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// proxied sends one request over a new connection to the data listener; closes reports
// whether the answer closes the connection.
func (s *shutdownSidecar) proxied() (code int, body string, closes bool, err error) {
	resp, err := (&http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{}}).Get("http://" + s.data + "/v1/export-jobs")
	if err != nil {
		return 0, "", false, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Close, err
}

// refused reports whether a new connection to the data listener is refused.
func (s *shutdownSidecar) refused() bool {
	c, err := net.DialTimeout("tcp", s.data, time.Second)
	if err != nil {
		return errors.Is(err, syscall.ECONNREFUSED)
	}
	c.Close()
	return false
}

// waitExit waits for the process to exit and returns its exit code and when it was seen.
func (s *shutdownSidecar) waitExit(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case err := <-s.exited:
		s.exited <- err // for the cleanup
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(within):
		t.Fatalf("the sidecar did not exit within %s:\n%s", within, s.log())
		return -1
	}
}

// waitUntil polls cond every 10 ms until it holds or the deadline passes, and returns when
// it first held.
func waitUntil(t *testing.T, deadline time.Time, what string, cond func() bool) time.Time {
	t.Helper()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not by %s", what, deadline.Format(time.StampMilli))
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Now()
}

// TestShutdownDelayKeepsServing: with PLEO_PROXY_SHUTDOWN_DELAY=2s, after SIGTERM readiness
// fails at once while a new connection to the data listener is still served; after the delay
// the listener refuses connections, and the process exits 0.
func TestShutdownDelayKeepsServing(t *testing.T) {
	const delay = 2 * time.Second
	s := startShutdownSidecar(t, "PLEO_PROXY_SHUTDOWN_DELAY=2s")
	if code, body, closes, err := s.proxied(); err != nil || code != 200 || body != "hello from upstream" || closes {
		t.Fatalf("before SIGTERM: %d %q %v (closes the connection: %v)", code, body, err, closes)
	}

	sent := time.Now()
	s.signal(t, syscall.SIGTERM)
	notReady := waitUntil(t, sent.Add(delay), "/readyz answers 503 within the delay", func() bool { return s.readyz() == 503 })
	t.Logf("/readyz 503 after %s", notReady.Sub(sent).Round(time.Millisecond))

	code, body, closes, err := s.proxied()
	served := time.Now()
	if err != nil || code != 200 || body != "hello from upstream" {
		t.Fatalf("a new connection during the delay: %d %q %v", code, body, err)
	}
	if !closes {
		t.Error("an answer during the delay keeps its connection open; want Connection: close, so no idle connection meets the drain")
	}
	if served.Sub(sent) >= delay {
		t.Fatalf("the request during the delay finished %s after SIGTERM, not within the %s delay: inconclusive", served.Sub(sent), delay)
	}

	closed := waitUntil(t, sent.Add(delay+10*time.Second), "the data listener refuses connections after the delay", s.refused)
	if closed.Sub(sent) < delay {
		t.Errorf("the data listener refused connections %s after SIGTERM, before the %s delay ended", closed.Sub(sent), delay)
	}
	t.Logf("data listener refused after %s", closed.Sub(sent).Round(time.Millisecond))
	if code := s.waitExit(t, 15*time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, s.log())
	}
	if !strings.Contains(s.log(), "shutdown delay") {
		t.Errorf("the delay was not logged:\n%s", s.log())
	}
}

// TestShutdownWithoutDelayClosesPromptly: with the default delay (0), the data listener
// refuses connections promptly after SIGTERM, as before the delay existed, and the process
// exits 0.
func TestShutdownWithoutDelayClosesPromptly(t *testing.T) {
	s := startShutdownSidecar(t)
	if code, _, _, err := s.proxied(); err != nil || code != 200 {
		t.Fatalf("before SIGTERM: %d %v", code, err)
	}
	sent := time.Now()
	s.signal(t, syscall.SIGTERM)
	closed := waitUntil(t, sent.Add(time.Second), "the data listener refuses connections within 1s of SIGTERM", s.refused)
	t.Logf("data listener refused after %s", closed.Sub(sent).Round(time.Millisecond))
	if code := s.waitExit(t, 10*time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, s.log())
	}
}

// TestShutdownDelaySecondSignal: a second SIGTERM (or SIGINT) during the delay ends it at
// once; the drain follows and the process exits 0.
func TestShutdownDelaySecondSignal(t *testing.T) {
	for _, second := range []os.Signal{syscall.SIGTERM, os.Interrupt} {
		t.Run(second.String(), func(t *testing.T) {
			s := startShutdownSidecar(t, "PLEO_PROXY_SHUTDOWN_DELAY=1m")
			sent := time.Now()
			s.signal(t, syscall.SIGTERM)
			waitUntil(t, sent.Add(10*time.Second), "/readyz answers 503", func() bool { return s.readyz() == 503 })
			if code, _, _, err := s.proxied(); err != nil || code != 200 {
				t.Fatalf("during the delay: %d %v", code, err)
			}
			s.signal(t, second)
			if code := s.waitExit(t, 10*time.Second); code != 0 {
				t.Fatalf("exit %d:\n%s", code, s.log())
			}
			if !strings.Contains(s.log(), "shutdown delay cut short") {
				t.Errorf("the cut was not logged:\n%s", s.log())
			}
		})
	}
}

// A context without the signal channel (run called in-process) never hurries.
func TestLaterSignalsAbsent(t *testing.T) {
	if ch := laterSignals(context.Background()); ch != nil {
		t.Fatalf("laterSignals = %v, want nil", ch)
	}
}
