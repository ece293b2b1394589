package proxy_test

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/proxy"
)

// TestAccessLogDurationNamedByUnit: the access line carries the request's duration as
// duration_ms, float milliseconds, in the JSON and the text handler alike; no bare
// nanosecond "duration".
func TestAccessLogDurationNamedByUnit(t *testing.T) {
	const took = 1234567 * time.Nanosecond // 1.234567 ms
	for _, tc := range []struct {
		name    string
		handler func(w *syncBuffer) slog.Handler
		check   func(t *testing.T, line string)
	}{
		{"json", func(w *syncBuffer) slog.Handler { return slog.NewJSONHandler(w, nil) }, func(t *testing.T, line string) {
			var m map[string]any
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				t.Fatalf("%v: %s", err, line)
			}
			if got, ok := m["duration_ms"].(float64); !ok || got != 1.234567 {
				t.Errorf("duration_ms = %#v, want the number 1.234567: %s", m["duration_ms"], line)
			}
			if _, ok := m["duration"]; ok {
				t.Errorf("the line still has duration: %s", line)
			}
		}},
		{"text", func(w *syncBuffer) slog.Handler { return slog.NewTextHandler(w, nil) }, func(t *testing.T, line string) {
			if !strings.Contains(line, " duration_ms=1.234567 ") || strings.Contains(line, " duration=") {
				t.Errorf("want duration_ms=1.234567 and no duration=: %s", line)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf syncBuffer
			var mu sync.Mutex
			var calls int
			start := time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC)
			clock := func() time.Time { // the first reading starts the request, later ones end it
				mu.Lock()
				defer mu.Unlock()
				calls++
				if calls == 1 {
					return start
				}
				return start.Add(took)
			}
			f := newFixture(t, nil, func(o *proxy.Options) { o.Logger, o.Now = slog.New(tc.handler(&buf)), clock })
			req, _ := http.NewRequest(http.MethodGet, f.proxy.URL+"/v1/export-jobs", nil)
			req.Header.Set("X-Pleo-Company-Id", companyA)
			if resp := do(t, req); resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			f.proxy.Close() // the access line is written when the handler returns
			var line string
			for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
				if strings.Contains(l, "request") && strings.Contains(l, "/v1/export-jobs") {
					line = l
				}
			}
			if line == "" {
				t.Fatalf("no access line in %q", buf.String())
			}
			tc.check(t, line)
		})
	}
}
