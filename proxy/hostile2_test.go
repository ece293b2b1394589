package proxy_test

// Hostile requests of issue 9 item 2 not covered by hostile_test.go, proxy_test.go and
// fuzz_test.go: request trailers, bare LF and control characters, duplicated Host, framing
// variants, OPTIONS *, forwarding headers, absolute-form URIs with another scheme and user
// info, and hop-by-hop abuse of Proxy-Authorization. Every case checks that nothing reaches
// another host, no request goes upstream with another company's credential, and no response
// echoes a secret.

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/proxy"
)

// TestHostileRequestsMore: raw requests through the data listener's real http.Server. For each,
// the first status, how many requests may reach the upstream, and — for those that do — that
// they carry company A's key only, no forwarding header, and no client credential.
//
// Defences: Go's HTTP/1.1 parser (bare LF ends a header line, control characters, duplicate
// Host and unknown transfer codings are refused), Rewrite (SetURL, header deletions;
// ReverseProxy's Rewrite mode drops inbound Forwarded/X-Forwarded-*), and the Selector
// (company_invalid / company_mismatch).
func TestHostileRequestsMore(t *testing.T) {
	hdr := "X-Pleo-Company-Id: " + companyA + "\r\n"
	closeHdr := "Connection: close\r\n"
	cases := []struct {
		name       string
		raw        string
		wantStatus int
		maxForward int
	}{
		// A bare LF ends the header line, so a second company header appears: refused as a
		// mismatch, or by the parser; never forwarded with B's key.
		{"bare LF smuggles a second company header", "GET /v1/x HTTP/1.1\r\nHost: a\r\n" + hdr + "X-Bad: a\nX-Pleo-Company-Id: " + companyB + "\r\n" + closeHdr + "\r\n", 400, 0},
		{"control character in the company header", "GET /v1/x HTTP/1.1\r\nHost: a\r\nX-Pleo-Company-Id: " + companyA + "\x01\r\n" + closeHdr + "\r\n", 400, 0},
		{"DEL in the tenant header", "GET /v1/x HTTP/1.1\r\nHost: a\r\nX-Tenant-Id: tenant-a\x7f\r\n" + closeHdr + "\r\n", 400, 0},
		{"tab inside the tenant header", "GET /v1/x HTTP/1.1\r\nHost: a\r\nX-Tenant-Id: tenant\t-a\r\n" + closeHdr + "\r\n", 400, 0},
		{"oversized tenant header", "GET /v1/x HTTP/1.1\r\nHost: a\r\nX-Tenant-Id: " + strings.Repeat("t", 300) + "\r\n" + closeHdr + "\r\n", 400, 0},
		{"company_id with NUL", "GET /v1/x?company_id=" + companyA + "%00 HTTP/1.1\r\nHost: a\r\n" + closeHdr + "\r\n", 400, 0},
		{"company_id with CR LF", "GET /v1/x?company_id=" + companyA + "%0d%0aX-Injected:%20y HTTP/1.1\r\nHost: a\r\n" + closeHdr + "\r\n", 400, 0},
		{"company_id with a path", "GET /v1/x?company_id=..%2F..%2F" + companyA + " HTTP/1.1\r\nHost: a\r\n" + closeHdr + "\r\n", 400, 0},
		{"company header with OWS is trimmed, not another company", "GET /v1/x HTTP/1.1\r\nHost: a\r\nX-Pleo-Company-Id: \t" + companyA + " \r\n" + closeHdr + "\r\n", 200, 1},
		{"two Host headers", "GET /v1/x HTTP/1.1\r\nHost: a\r\nHost: evil.example\r\n" + hdr + closeHdr + "\r\n", 400, 0},
		{"Transfer-Encoding repeated", "POST /v1/x HTTP/1.1\r\nHost: a\r\n" + hdr + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501, 0},
		{"Transfer-Encoding chunked, identity", "POST /v1/x HTTP/1.1\r\nHost: a\r\n" + hdr + "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 501, 0},
		{"Content-Length with a sign", "POST /v1/x HTTP/1.1\r\nHost: a\r\n" + hdr + "Content-Length: +3\r\n\r\nabc", 400, 0},
		{"OPTIONS * is answered by the server, never forwarded", "OPTIONS * HTTP/1.1\r\nHost: a\r\n" + hdr + closeHdr + "\r\n", 200, 0},
		{"forwarding headers from the client", "GET /v1/x HTTP/1.1\r\nHost: a\r\n" + hdr + "X-Forwarded-Host: evil.example\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\nForwarded: host=evil.example;for=1.2.3.4\r\n" + closeHdr + "\r\n", 200, 1},
		{"absolute-form https URI with user info", "GET https://user:pass@evil.example:8443/v1/x HTTP/1.1\r\nHost: evil.example\r\n" + hdr + closeHdr + "\r\n", 200, 1},
		{"Connection names the selection header", "GET /v1/x HTTP/1.1\r\nHost: a\r\n" + hdr + "Connection: close, X-Pleo-Company-Id, Authorization\r\n\r\n", 200, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			addr := hostileServer(t, f, nil)
			codes := exchangeRaw(t, addr, tc.raw)
			if len(codes) == 0 || codes[0] != tc.wantStatus {
				t.Fatalf("statuses %v, want first %d", codes, tc.wantStatus)
			}
			got := f.received()
			if len(got) > tc.maxForward {
				t.Fatalf("upstream received %d requests, want at most %d: %+v", len(got), tc.maxForward, got)
			}
			if len(got) < tc.maxForward {
				t.Fatalf("upstream received %d requests, want %d", len(got), tc.maxForward)
			}
			for _, g := range got {
				if a := g.Header.Values("Authorization"); len(a) != 1 || a[0] != credentials.BasicAuthorization(keyA) {
					t.Fatalf("upstream Authorization %q, want company A's key only", a)
				}
				if g.Path != "/v1/x" || g.Host != strings.TrimPrefix(f.upstream.URL, "http://") {
					t.Fatalf("upstream got %s %s", g.Host, g.Path)
				}
				for _, h := range []string{"X-Forwarded-Host", "X-Forwarded-For", "X-Forwarded-Proto", "Forwarded", "X-Pleo-Company-Id", "X-Injected"} {
					if v := g.Header.Values(h); len(v) != 0 {
						t.Fatalf("%s reached the upstream: %q", h, v)
					}
				}
			}
		})
	}
}

// Request trailers arrive after the body, past every header check: a client could send
// Authorization (a credential of its own), Proxy-Authorization (its client token — a secret of
// the sidecar's) or another company's selection header as trailers. None may reach the upstream.
//
// Defence: Rewrite drops the outbound request's trailers (handler.go). Without it the upstream
// receives all three (the transport forwards request trailers of a chunked body).
func TestRequestTrailersNotForwarded(t *testing.T) {
	for _, size := range []struct {
		name string
		body string
	}{
		{"buffered body", "abc"},
		{"body over MaxReplayBytes (streamed)", strings.Repeat("z", 4096)},
	} {
		t.Run(size.name, func(t *testing.T) {
			var mu sync.Mutex
			var trailers []http.Header
			f := newFixture(t, func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				trailers = append(trailers, r.Trailer.Clone())
				mu.Unlock()
			}, func(o *proxy.Options) {
				o.MaxReplayBytes = 1024
				o.ClientTokens = []credentials.Secret{"client-token-1"}
			})
			addr := hostileServer2(t, f)
			raw := "POST /v1/x HTTP/1.1\r\nHost: a\r\nX-Pleo-Company-Id: " + companyA + "\r\n" +
				"Proxy-Authorization: Bearer client-token-1\r\n" +
				"Transfer-Encoding: chunked\r\nTrailer: Authorization, Proxy-Authorization, X-Pleo-Company-Id, X-Tenant-Id\r\nConnection: close\r\n\r\n" +
				chunk(size.body) + "0\r\nAuthorization: Bearer stolen\r\nProxy-Authorization: Bearer client-token-1\r\n" +
				"X-Pleo-Company-Id: " + companyB + "\r\nX-Tenant-Id: tenant-b\r\n\r\n"
			if codes := exchangeRaw(t, addr, raw); len(codes) != 1 || codes[0] != 200 {
				t.Fatalf("statuses %v, want 200", codes)
			}
			got := f.received()
			if len(got) != 1 || got[0].Header.Get("Authorization") != credentials.BasicAuthorization(keyA) || got[0].Body != size.body {
				t.Fatalf("upstream got %+v", got)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, tr := range trailers {
				if len(tr) != 0 {
					t.Fatalf("request trailers reached the upstream: %v", tr)
				}
			}
		})
	}
}

func chunk(s string) string {
	const hex = "0123456789abcdef"
	n, size := len(s), ""
	for ; n > 0; n /= 16 {
		size = string(hex[n%16]) + size
	}
	return size + "\r\n" + s + "\r\n"
}

// hostileServer2 serves f's own handler (with its options) through proxy.NewServer.
func hostileServer2(t *testing.T, f *fixture) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(f.proxy.Config.Handler)
	srv.Config = proxy.NewServer(f.proxy.Config.Handler, nil)
	srv.Start()
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// Connection: Proxy-Authorization cannot make the client token check pass or be skipped, and
// a response never echoes a client token or a stored key.
//
// Defence: clientAuthenticated reads the inbound header before any hop-by-hop processing.
func TestClientTokenHopByHopAbuse(t *testing.T) {
	var upstreamHits atomic.Int32
	f := newFixture(t, func(w http.ResponseWriter, r *http.Request) { upstreamHits.Add(1) }, func(o *proxy.Options) {
		o.ClientTokens = []credentials.Secret{"client-token-1"}
	})
	addr := hostileServer2(t, f)
	for _, tc := range []struct {
		name, headers string
		want          int
	}{
		{"no token, Connection names Proxy-Authorization", "Connection: Proxy-Authorization\r\n", 407},
		{"wrong token, Connection names Proxy-Authorization", "Proxy-Authorization: Bearer nope\r\nConnection: Proxy-Authorization\r\n", 407},
		{"token in Authorization instead", "Authorization: Bearer client-token-1\r\n", 407},
		{"good token, Connection names it", "Proxy-Authorization: Bearer client-token-1\r\nConnection: Proxy-Authorization\r\n", 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := upstreamHits.Load()
			c := exchangeBody(t, addr, "GET /v1/x HTTP/1.1\r\nHost: a\r\nX-Pleo-Company-Id: "+companyA+"\r\n"+tc.headers+"\r\n")
			if c.status != tc.want {
				t.Fatalf("status %d, want %d", c.status, tc.want)
			}
			if strings.Contains(c.body, "client-token-1") || strings.Contains(c.body, keyA) {
				t.Fatalf("the response echoes a secret: %s", c.body)
			}
			if hits := upstreamHits.Load() - before; tc.want != 200 && hits != 0 {
				t.Fatalf("an unauthenticated request reached the upstream")
			}
		})
	}
	for _, g := range f.received() {
		if g.Header.Get("Proxy-Authorization") != "" {
			t.Fatal("the client token reached the upstream")
		}
	}
}

type rawReply struct {
	status int
	body   string
}

// exchangeBody writes one raw request and returns the response's status and body.
func exchangeBody(t *testing.T, addr, raw string) rawReply {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return rawReply{resp.StatusCode, string(b)}
}
