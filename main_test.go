package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
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
)

// buildBinary compiles the sidecar once per test binary.
var buildBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "pleo-auth-proxy-e2e")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "pleo-auth-proxy")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", &buildError{string(out), err}
	}
	return bin, nil
})

type buildError struct {
	out string
	err error
}

func (e *buildError) Error() string { return e.err.Error() + ": " + e.out }

func binary(t *testing.T) string {
	t.Helper()
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

const (
	e2eCompany = "5a1c0000-0000-4000-8000-0000000000e2"
	e2eKey     = "e2e-integrated-key"
)

func runCLI(t *testing.T, env []string, stdin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(binary(t), args...)
	cmd.Env = env
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

func TestEndToEnd(t *testing.T) {
	var seenAuth sync.Map
	release := make(chan struct{})
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seenAuth.Store(r.URL.Path, r.Header.Get("Authorization"))
		if r.URL.Path == "/v1/slow" {
			<-release
		}
		io.WriteString(w, "hello from upstream")
	}))
	defer upstream.Close()

	dir := t.TempDir()
	storePath := filepath.Join(dir, "credentials.json")
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"PLEO_PROXY_STORE=file://" + storePath,
		"PLEO_PROXY_UPSTREAM_URL=" + upstream.URL,
		"PLEO_PROXY_LISTEN_ADDR=127.0.0.1:0",
		"PLEO_PROXY_ADMIN_ADDR=127.0.0.1:0",
		"PLEO_PROXY_SHUTDOWN_TIMEOUT=10s",
	}

	// A bad record names its index and field, and nothing is written.
	bad := `{"credentials":[{"company_id":"` + e2eCompany + `","type":"integrated_api_key","api_key":"k"},{"company_id":"nope","type":"oauth2"}]}`
	_, stderr, code := runCLI(t, env, bad, "credentials", "import", "-")
	if code == 0 || !strings.Contains(stderr, "record 1") || !strings.Contains(stderr, "company_id") {
		t.Fatalf("bad import: exit %d, stderr %q", code, stderr)
	}
	if _, err := os.Stat(storePath); !os.IsNotExist(err) {
		t.Fatalf("a failed import wrote the store: %v", err)
	}
	good := `{"credentials":[{"company_id":"` + e2eCompany + `","tenant_id":"t-1","type":"integrated_api_key","api_key":"` + e2eKey + `"}]}`
	if out, stderr, code := runCLI(t, env, good, "credentials", "import", "-"); code != 0 {
		t.Fatalf("import: exit %d: %s %s", code, out, stderr)
	}
	out, _, code := runCLI(t, env, "", "credentials", "list")
	if code != 0 || !strings.Contains(out, e2eCompany) || strings.Contains(out, e2eKey) {
		t.Fatalf("list: exit %d, output %q (must list the company, never the key)", code, out)
	}

	// Bad configuration: exit non-zero before listening, naming the variable.
	_, stderr, code = runCLI(t, append(env[:len(env):len(env)], "PLEO_PROXY_REFRESH_BEFORE=soon"), "", "serve")
	if code == 0 || !strings.Contains(stderr, "PLEO_PROXY_REFRESH_BEFORE") {
		t.Fatalf("bad config: exit %d, stderr %q", code, stderr)
	}

	// Serve.
	cmd := exec.Command(binary(t), "serve")
	cmd.Env = append(env, "PLEO_PROXY_LOG_FORMAT=text")
	stderrPipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	logs := make(chan string, 100)
	go func() {
		s := bufio.NewScanner(stderrPipe)
		for s.Scan() {
			logs <- s.Text()
		}
		close(logs)
	}()
	var dataAddr, adminAddr string
	re := regexp.MustCompile(`listen=(\S+) admin=(\S+)`)
	deadline := time.After(10 * time.Second)
	var logged []string
	for dataAddr == "" {
		select {
		case line, ok := <-logs:
			if !ok {
				t.Fatalf("sidecar exited: %s", strings.Join(logged, "\n"))
			}
			logged = append(logged, line)
			if m := re.FindStringSubmatch(line); m != nil {
				dataAddr, adminAddr = m[1], m[2]
			}
		case <-deadline:
			t.Fatalf("no start line: %s", strings.Join(logged, "\n"))
		}
	}

	// A proxied request gets the key injected.
	req, _ := http.NewRequest("GET", "http://"+dataAddr+"/v1/export-jobs", nil)
	req.Header.Set("X-Tenant-Id", "t-1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "hello from upstream" {
		t.Fatalf("proxied: %d %q", resp.StatusCode, body)
	}
	if a, _ := seenAuth.Load("/v1/export-jobs"); a != credentials.BasicAuthorization(e2eKey) {
		t.Fatalf("upstream saw Authorization %q", a)
	}
	// A problem.
	resp, err = http.Get("http://" + dataAddr + "/v1/export-jobs")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 || resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("problem: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	// Readiness, and the healthcheck command.
	resp, err = http.Get("http://" + adminAddr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/readyz: %d", resp.StatusCode)
	}
	if _, stderr, code := runCLI(t, append(env[:len(env):len(env)], "PLEO_PROXY_ADMIN_ADDR="+adminAddr), "", "healthcheck"); code != 0 {
		t.Fatalf("healthcheck: exit %d %s", code, stderr)
	}

	// Graceful shutdown: an in-flight request completes after SIGTERM, then the process exits 0.
	slow := make(chan *http.Response, 1)
	go func() {
		req, _ := http.NewRequest("GET", "http://"+dataAddr+"/v1/slow", nil)
		req.Header.Set("X-Pleo-Company-Id", e2eCompany)
		r, err := http.DefaultClient.Do(req)
		if err != nil {
			slow <- nil
			return
		}
		slow <- r
	}()
	waitFor(t, func() bool { _, ok := seenAuth.Load("/v1/slow"); return ok })
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Readiness turns 503 while draining.
	waitFor(t, func() bool {
		r, err := http.Get("http://" + adminAddr + "/readyz")
		if err != nil {
			return true // already closed is fine too
		}
		r.Body.Close()
		return r.StatusCode == 503
	})
	close(release)
	r := <-slow
	if r == nil || r.StatusCode != 200 {
		t.Fatalf("in-flight request during shutdown: %v", r)
	}
	r.Body.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("sidecar did not exit after SIGTERM")
	}
	for line := range logs {
		logged = append(logged, line)
	}
	all := strings.Join(logged, "\n")
	if strings.Contains(all, e2eKey) || strings.Contains(all, credentials.BasicAuthorization(e2eKey)[6:]) {
		t.Fatal("a secret reached the log")
	}
	if !strings.Contains(all, "stopped") {
		t.Fatalf("no clean stop logged: %s", all)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatal("condition not met in 10s")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func TestRunUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"frobnicate"}, nil, strings.NewReader(""), &out, &errOut)
	if exitCode(err) != 2 || err == nil || !strings.Contains(err.Error(), "known: serve") {
		t.Fatalf("unknown command: %v, %q", err, errOut.String())
	}
	out.Reset()
	if err := run(context.Background(), []string{"version"}, nil, nil, &out, &errOut); err != nil || !strings.HasPrefix(out.String(), "pleo-auth-proxy ") {
		t.Fatalf("version: %v %q", err, out.String())
	}
}

// startDevSidecar starts the built binary with --dev on loopback ports chosen by the kernel,
// the environment cleared but for PATH and env, and returns its start-up log line's fields.
// The process is killed at cleanup.
func startDevSidecar(t *testing.T, env ...string) map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, binary(t), "serve", "--dev")
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "PLEO_PROXY_LOG_FORMAT=json",
		"PLEO_PROXY_LISTEN_ADDR=127.0.0.1:0", "PLEO_PROXY_ADMIN_ADDR=127.0.0.1:0", "PLEO_PROXY_CONNECT_ADDR=127.0.0.1:0"}, env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) == nil && line["msg"] == "pleo-auth-proxy started" {
			go func() { _, _ = io.Copy(io.Discard, stderr) }() // keep the pipe drained
			return line
		}
	}
	t.Fatalf("no start-up line (scan error %v)", sc.Err())
	return nil
}
