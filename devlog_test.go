package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// tokenLike matches what an OAuth token of the mock looks like (43 base64url characters); a
// company id (with dashes every few characters) or a request id (32 hex) does not match.
var tokenLike = regexp.MustCompile(`[A-Za-z0-9_]{40,}`)

// TestDevLogsRefreshes: `serve --dev` promises refreshes in the log. A request that needs a
// refresh (PLEO_PROXY_REFRESH_BEFORE longer than the mock's 20 s tokens) logs one info line
// naming the company, trigger, result, duration and new expiry, and no token; the access line
// carries duration_ms as a number, and no duration in nanoseconds.
func TestDevLogsRefreshes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t), "serve", "--dev")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "PLEO_PROXY_LOG_FORMAT=json",
		"PLEO_PROXY_LISTEN_ADDR=127.0.0.1:0", "PLEO_PROXY_ADMIN_ADDR=127.0.0.1:0", "PLEO_PROXY_CONNECT_ADDR=127.0.0.1:0",
		"PLEO_PROXY_REFRESH_BEFORE=19s"}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	type logLine struct {
		m   map[string]any // nil when not JSON
		raw string
	}
	lines := make(chan logLine, 1000)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			l := logLine{raw: sc.Text()}
			_ = json.Unmarshal(sc.Bytes(), &l.m)
			lines <- l
		}
		close(lines)
	}()
	var all []string
	record := func(l logLine, ok bool) map[string]any {
		t.Helper()
		if !ok {
			t.Fatalf("the sidecar exited:\n%s", strings.Join(all, "\n"))
		}
		all = append(all, l.raw)
		return l.m
	}
	var listen string
	startDeadline := time.After(30 * time.Second)
	for listen == "" {
		select {
		case l, ok := <-lines:
			if m := record(l, ok); m["msg"] == "pleo-auth-proxy started" {
				listen = m["listen"].(string)
			}
		case <-startDeadline:
			t.Fatal("no start-up line")
		}
	}

	// Requests for the OAuth company until one triggers a refresh (the first should; a lead
	// time clamped to part of the token's lifetime would make a later one).
	var refreshed, access map[string]any
	deadline := time.After(40 * time.Second)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for refreshed == nil || access == nil {
		select {
		case <-tick.C:
			req, _ := http.NewRequest(http.MethodGet, "http://"+listen+"/v1/export-jobs", nil)
			req.Header.Set("X-Pleo-Company-Id", devOAuthCompany)
			resp, err := faultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
		case l, ok := <-lines:
			switch m := record(l, ok); {
			case m["msg"] == "token refreshed":
				refreshed = m
			case m["msg"] == "request" && access == nil:
				access = m
			}
		case <-deadline:
			t.Fatalf("no refresh logged at info within 40s:\n%s", strings.Join(all, "\n"))
		}
	}
	line := all[len(all)-1]
	for _, l := range all {
		if strings.Contains(l, `"token refreshed"`) {
			line = l
		}
	}
	t.Logf("%s", line)
	if refreshed["level"] != "INFO" || refreshed["company_id"] != devOAuthCompany || refreshed["result"] != "success" || refreshed["trigger"] == nil {
		t.Errorf("refresh line: %s", line)
	}
	if d, ok := refreshed["duration_ms"].(float64); !ok || d < 0 {
		t.Errorf("refresh line: duration_ms = %#v: %s", refreshed["duration_ms"], line)
	}
	if exp, _ := refreshed["expires_at"].(string); exp == "" {
		t.Errorf("refresh line: no expires_at: %s", line)
	} else if at, err := time.Parse(time.RFC3339Nano, exp); err != nil || !at.After(time.Now()) {
		t.Errorf("refresh line: expires_at %q is not a future time: %s", exp, line)
	}
	if w, ok := refreshed["commit_window"].(string); !ok || !strings.HasSuffix(w, "s") {
		t.Errorf("refresh line: commit_window = %#v, want a duration with its unit, not nanoseconds: %s", refreshed["commit_window"], line)
	}
	if _, ok := access["duration_ms"].(float64); !ok {
		t.Errorf("access line: duration_ms = %#v, want a number: %v", access["duration_ms"], access)
	}
	if _, ok := access["duration"]; ok {
		t.Errorf("access line still has duration: %v", access)
	}
	for _, l := range all {
		if tok := tokenLike.FindString(l); tok != "" {
			t.Errorf("a token-like value %q in the log: %s", tok, l)
		}
	}
}
