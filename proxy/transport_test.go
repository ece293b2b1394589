package proxy_test

import (
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/testenv"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/proxy"
)

// TestUpstreamMaxConns shows that the transport's bound holds: concurrent requests beyond it
// wait for a connection rather than open more, and all of them are answered. The unbounded
// row shows that the requests would otherwise reach the upstream all at once.
func TestUpstreamMaxConns(t *testing.T) {
	const clients = 12
	for _, tc := range []struct {
		name     string
		maxConns int
		want     int // requests in the upstream at once
	}{
		{"bounded", 3, 3},
		{"unbounded", 0, clients},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var inflight, peak atomic.Int64
			release := make(chan struct{})
			f := newFixture(t, func(w http.ResponseWriter, r *http.Request) {
				n := inflight.Add(1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				<-release
				inflight.Add(-1)
				_, _ = io.WriteString(w, "ok")
			}, func(o *proxy.Options) { o.Transport = proxy.NewUpstreamTransport(10*time.Second, tc.maxConns) })
			client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: clients, MaxIdleConnsPerHost: clients}}
			t.Cleanup(client.CloseIdleConnections)

			var wg sync.WaitGroup
			codes := make(chan int, clients)
			for range clients {
				wg.Go(func() {
					req, _ := http.NewRequest(http.MethodGet, f.proxy.URL+"/v1/x", nil)
					req.Header.Set("X-Pleo-Company-Id", companyA)
					resp, err := client.Do(req)
					if err != nil {
						t.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					codes <- resp.StatusCode
				})
			}
			testenv.WaitFor(t, "requests to reach the upstream", 5*time.Second, func() bool { return inflight.Load() >= int64(tc.want) })
			// Give any request the bound failed to hold back the time to arrive: on loopback
			// a new connection takes well under a millisecond.
			time.Sleep(100 * time.Millisecond)
			if got := peak.Load(); got != int64(tc.want) {
				t.Errorf("%d requests in the upstream at once, want %d", got, tc.want)
			}
			close(release)
			wg.Wait()
			close(codes)
			n := 0
			for c := range codes {
				if c != http.StatusOK {
					t.Errorf("status %d", c)
				}
				n++
			}
			if n != clients {
				t.Errorf("%d answers, want %d", n, clients)
			}
		})
	}
}
