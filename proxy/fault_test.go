package proxy_test

// Faults of the network and of the token endpoint, through the real handler: an upstream that
// resets or half-closes the connection, one that is slow, and a token endpoint that hangs.
// Each test names the defence that makes it pass.

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/oauthtest"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/proxy"
)

// faultUpstream is an upstream whose every request is answered by misbehave, on the raw
// connection (hijacked once the request head is read). It counts requests.
type faultUpstream struct {
	srv      *httptest.Server
	requests atomic.Int32
	mu       sync.Mutex
	auth     []string
}

func newFaultUpstream(t *testing.T, misbehave func(c net.Conn, rw *bufio.ReadWriter, r *http.Request)) *faultUpstream {
	t.Helper()
	u := &faultUpstream{}
	done := make(chan struct{})
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.requests.Add(1)
		u.mu.Lock()
		u.auth = append(u.auth, r.Header.Get("Authorization"))
		u.mu.Unlock()
		c, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		misbehave(c, rw, r)
		select { // half-closed connections stay open (for reading) until the test ends
		case <-done:
		case <-time.After(30 * time.Second):
		}
		c.Close()
	}))
	t.Cleanup(func() { close(done); u.srv.Close() })
	return u
}

// reset aborts the connection with a TCP RST.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// A broken upstream connection becomes a 502 upstream_unreachable problem that carries no
// credential, the attempt is not repeated (a non-idempotent request must never be sent twice;
// the only retry is the one after a 401), and nothing secret reaches the log.
//
// Defences: the ErrorHandler (proxyError → problemFor; without it ReverseProxy writes a bare
// 502 and this test fails on the problem document), authTransport retrying on a 401 only (a
// retry on error would show as two upstream requests), and fixed problem details (an error
// text in the detail would be caught by the secret check).
func TestFaultUpstreamConnectionBroken(t *testing.T) {
	misbehaviours := []struct {
		name string
		do   func(c net.Conn, rw *bufio.ReadWriter, r *http.Request)
	}{
		{"reset before answering", func(c net.Conn, _ *bufio.ReadWriter, _ *http.Request) { reset(c) }},
		{"half-closed before answering", func(c net.Conn, _ *bufio.ReadWriter, _ *http.Request) {
			_ = c.(*net.TCPConn).CloseWrite() // FIN: no response will come; reading stays open
		}},
		{"reset in the middle of the head", func(c net.Conn, rw *bufio.ReadWriter, _ *http.Request) {
			rw.WriteString("HTTP/1.1 200 OK\r\nContent-Type: appl")
			rw.Flush()
			reset(c)
		}},
		{"half-closed in the middle of the head", func(c net.Conn, rw *bufio.ReadWriter, _ *http.Request) {
			rw.WriteString("HTTP/1.1 200 OK\r\nX-Partial: 1\r\n")
			rw.Flush()
			_ = c.(*net.TCPConn).CloseWrite()
		}},
		{"not HTTP at all", func(c net.Conn, rw *bufio.ReadWriter, _ *http.Request) {
			rw.WriteString("SSH-2.0-OpenSSH_9.6\r\n\r\n")
			rw.Flush()
			_ = c.(*net.TCPConn).CloseWrite()
		}},
	}
	for _, mb := range misbehaviours {
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			t.Run(mb.name+" "+method, func(t *testing.T) {
				up := newFaultUpstream(t, mb.do)
				var logs syncBuffer
				f := newFixture(t, nil, func(o *proxy.Options) {
					o.Upstream, _ = url.Parse(up.srv.URL)
					o.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
				})
				var body io.Reader
				if method == http.MethodPost {
					body = strings.NewReader(`{"amount":100}`)
				}
				req, _ := http.NewRequest(method, f.proxy.URL+"/v1/payments?secret_query=q-123", body)
				req.Header.Set("X-Pleo-Company-Id", companyA)
				client := &http.Client{Timeout: 10 * time.Second}
				resp, err := client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				raw, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("Content-Type") != "application/problem+json" ||
					!strings.Contains(string(raw), `"code":"upstream_unreachable"`) || !strings.HasPrefix(resp.Header.Get("Proxy-Status"), "pleo-auth-proxy;") {
					t.Fatalf("got %d %v %s, want a 502 upstream_unreachable problem", resp.StatusCode, resp.Header, raw)
				}
				if resp.Header.Get("X-Partial") != "" {
					t.Fatal("a header of the broken response reached the caller")
				}
				if n := up.requests.Load(); n != 1 {
					t.Fatalf("the upstream saw %d requests, want exactly 1 (no retry after a broken connection)", n)
				}
				auth := credentials.BasicAuthorization(keyA)
				for what, s := range map[string]string{"response": string(raw), "log": logs.String()} {
					if strings.Contains(s, keyA) || strings.Contains(s, auth) || strings.Contains(s, auth[len("Basic "):]) {
						t.Fatalf("the %s carries the credential: %s", what, s)
					}
					if strings.Contains(s, "q-123") {
						t.Fatalf("the %s carries the query string: %s", what, s)
					}
				}
				if !strings.Contains(logs.String(), "code=upstream_unreachable") {
					t.Fatalf("the failure is not logged with its code:\n%s", logs.String())
				}
			})
		}
	}
}

// After a 401 the retry's connection breaks: the caller gets the 502 problem (not the stale
// 401), after exactly two attempts and one refresh.
//
// Defence: authTransport returning the retry's error (not the first attempt's response, whose
// body was already drained) and attempting at most twice.
func TestFaultRetryAfter401HitsBrokenConnection(t *testing.T) {
	var apiCalls atomic.Int32
	var tokenServer *oauthtest.Server
	e := newOAuthEnv(t, oaConfig{upstream: func(s *oauthtest.Server) string {
		tokenServer = s
		up := newFaultUpstream(t, func(c net.Conn, rw *bufio.ReadWriter, r *http.Request) {
			if apiCalls.Add(1) == 1 {
				rw.WriteString("HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
				rw.Flush()
				_ = c.(*net.TCPConn).CloseWrite()
				return
			}
			reset(c)
		})
		return up.srv.URL
	}})
	company := oaCompany(1)
	e.seed(10*time.Minute, company)
	before := tokenServer.Stats()
	r := e.call(http.MethodPost, company, &oaBody{data: []byte(`{"n":1}`)})
	if r.status != http.StatusBadGateway || r.problem(t) != "upstream_unreachable" {
		t.Fatalf("got %d %s, want 502 upstream_unreachable", r.status, r.body)
	}
	if n := apiCalls.Load(); n != 2 {
		t.Fatalf("%d upstream attempts, want 2 (the request and one retry)", n)
	}
	if d := e.since(before); d.TokenCalls != 1 {
		t.Fatalf("%d token calls, want 1", d.TokenCalls)
	}
}

// A response whose body breaks after its head was sent: the caller's read fails. The sidecar
// must neither end the chunked body cleanly (a silently truncated document) nor append a
// problem to it, nor retry.
//
// Defence: ReverseProxy aborting the response (panic(http.ErrAbortHandler)) when copying the
// body fails, which the handler must not recover from; a recovery that swallowed it would end
// the chunked body cleanly and this test would fail.
func TestFaultUpstreamResetMidBody(t *testing.T) {
	const firstPart = `{"part":1}`
	partDelivered := make(chan struct{}) // closed once the caller has read the first part
	up := newFaultUpstream(t, func(c net.Conn, rw *bufio.ReadWriter, r *http.Request) {
		rw.WriteString("HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n")
		rw.WriteString("d\r\n{\"part\":1}\r\n\r\n")
		rw.Flush()
		select { // reset only once the body is known to be under way
		case <-partDelivered:
		case <-t.Context().Done():
		}
		reset(c)
	})
	f := newFixture(t, nil, func(o *proxy.Options) { o.Upstream, _ = url.Parse(up.srv.URL) })
	req, _ := http.NewRequest(http.MethodGet, f.proxy.URL+"/v1/export", nil)
	req.Header.Set("X-Pleo-Company-Id", companyA)
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got := make([]byte, len(firstPart))
	n, err := io.ReadFull(resp.Body, got)
	got = got[:n]
	close(partDelivered)
	if err == nil {
		var rest []byte
		rest, err = io.ReadAll(resp.Body)
		got = append(got, rest...)
	}
	if resp.StatusCode != http.StatusOK || err == nil {
		t.Fatalf("got %d, body %q, read error %v; want 200 and a failed read", resp.StatusCode, got, err)
	}
	if strings.Contains(string(got), "problem") || !strings.HasPrefix(string(got), firstPart) {
		t.Fatalf("body %q", got)
	}
	if n := up.requests.Load(); n != 1 {
		t.Fatalf("the upstream saw %d requests, want 1", n)
	}
}

// A slow upstream: no response head within the upstream timeout is a 504 upstream_timeout
// problem, after about that long, with the upstream request cancelled (no connection or
// goroutine left waiting) and not retried. A response whose head arrived in time may then
// stream as slowly as it likes.
//
// Defences: ResponseHeaderTimeout in NewUpstreamTransport (PLEO_PROXY_UPSTREAM_TIMEOUT), and
// problemFor mapping a timeout to 504 (without the first the request hangs past the client's
// deadline; without the second it is a 502).
func TestFaultSlowUpstream(t *testing.T) {
	const timeout = 300 * time.Millisecond
	t.Run("no head in time", func(t *testing.T) {
		var requests atomic.Int32
		cancelled := make(chan struct{}, 4)
		f := newFixture(t, func(w http.ResponseWriter, r *http.Request) {
			requests.Add(1)
			select {
			case <-r.Context().Done():
				cancelled <- struct{}{}
			case <-time.After(30 * time.Second):
			}
		}, func(o *proxy.Options) { o.Transport = proxy.NewUpstreamTransport(timeout, proxy.DefaultMaxConns) })
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			req, _ := http.NewRequest(method, f.proxy.URL+"/v1/slow", strings.NewReader("x"))
			req.Header.Set("X-Pleo-Company-Id", companyA)
			start := time.Now()
			resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
			if err != nil {
				t.Fatalf("%s: %v (the upstream timeout did not fire)", method, err)
			}
			took := time.Since(start)
			p := decodeProblem(t, resp)
			resp.Body.Close()
			if resp.StatusCode != http.StatusGatewayTimeout || p.Code != "upstream_timeout" {
				t.Fatalf("%s: got %d %+v, want 504 upstream_timeout", method, resp.StatusCode, p)
			}
			if took < timeout {
				t.Fatalf("%s: answered after %s, before the %s timeout", method, took, timeout)
			}
			select {
			case <-cancelled:
			case <-time.After(5 * time.Second):
				t.Fatalf("%s: the upstream request was not cancelled", method)
			}
		}
		if n := requests.Load(); n != 2 {
			t.Fatalf("the upstream saw %d requests, want 2 (one each, no retry)", n)
		}
	})
	t.Run("head in time, slow body streams", func(t *testing.T) {
		f := newFixture(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/x-ndjson")
			for i := range 3 {
				io.WriteString(w, `{"chunk":`+string(rune('1'+i))+"}\n")
				w.(http.Flusher).Flush()
				// The gap itself is what is under test (it must outlast the upstream timeout),
				// so it is real time, not a wait for an event.
				select {
				case <-time.After(timeout):
				case <-r.Context().Done():
					return
				}
			}
		}, func(o *proxy.Options) { o.Transport = proxy.NewUpstreamTransport(timeout, proxy.DefaultMaxConns) })
		req, _ := http.NewRequest(http.MethodGet, f.proxy.URL+"/v1/stream", nil)
		req.Header.Set("X-Pleo-Company-Id", companyA)
		resp := do(t, req)
		body, err := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || err != nil || strings.Count(string(body), "\n") != 3 {
			t.Fatalf("got %d %q %v, want the whole slow stream", resp.StatusCode, body, err)
		}
	})
}

// hangingListener accepts connections and never answers (nor reads): a token endpoint that
// hangs at the TCP level.
func hangingListener(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return "http://" + ln.Addr().String() + "/oauth/token"
}

// A slow or hanging token endpoint: the refresh is bounded by the token timeout; every caller
// waiting on it is released then with the 502 token_endpoint_error problem (one token call for
// all of them); the upstream never sees the expired token; and once the endpoint answers again
// and the company's backoff has passed, the next request refreshes and succeeds.
//
// Defence: the refresh's own deadline (refresh: context.WithTimeout(TokenTimeout), and the
// token HTTP client's Timeout, the same bound twice). Without both, the callers wait as long
// as the endpoint hangs (a minute here) and the test fails at the client's 10 s deadline.
func TestFaultHangingTokenEndpoint(t *testing.T) {
	const tokenTimeout = 300 * time.Millisecond
	for _, tc := range []struct {
		name     string
		tokenURL func(t *testing.T, s *oauthtest.Server) string
		hang     func(s *oauthtest.Server)
		recover  func(s *oauthtest.Server) // nil: the endpoint stays down
	}{
		{
			name:    "answers after a minute",
			hang:    func(s *oauthtest.Server) { s.SetTokenDelay(time.Minute) },
			recover: func(s *oauthtest.Server) { s.SetTokenDelay(0) },
		},
		{
			name:     "accepts the connection, never answers",
			tokenURL: func(t *testing.T, _ *oauthtest.Server) string { return hangingListener(t) },
			hang:     func(*oauthtest.Server) {},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := oaConfig{broker: func(o *credentials.BrokerOptions) {
				o.TokenTimeout = tokenTimeout
				o.MaxBackoff = 2 * time.Second
			}}
			if tc.tokenURL != nil {
				cfg.tokenURL = func(s *oauthtest.Server) string { return tc.tokenURL(t, s) }
			}
			e := newOAuthEnv(t, cfg)
			company := oaCompany(1)
			e.seed(-time.Minute, company) // expired: every request needs the refresh
			tc.hang(e.srv)
			before := e.srv.Stats()

			const waiters = 10
			var wg sync.WaitGroup
			codes := make(chan string, waiters)
			for range waiters {
				wg.Go(func() {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					start := time.Now()
					r, err := e.try(ctx, http.MethodGet, company, nil)
					if err != nil {
						t.Errorf("caller not released: %v", err)
						return
					}
					if took := time.Since(start); took > 5*time.Second {
						t.Errorf("released after %s, want about the %s token timeout", took, tokenTimeout)
					}
					if r.status != http.StatusBadGateway {
						t.Errorf("got %d %s, want 502", r.status, r.body)
						return
					}
					codes <- r.problem(t)
				})
			}
			wg.Wait()
			close(codes)
			n := 0
			for c := range codes {
				n++
				if c != "token_endpoint_error" {
					t.Fatalf("problem %q, want token_endpoint_error", c)
				}
			}
			if n != waiters {
				t.Fatalf("%d of %d callers got the problem", n, waiters)
			}
			d := e.since(before)
			if d.APICalls != 0 {
				t.Fatalf("the upstream saw %d requests: an expired token was sent", d.APICalls)
			}
			if tc.tokenURL == nil && d.TokenCalls != 1 {
				t.Fatalf("%d token calls, want 1 shared by all callers", d.TokenCalls)
			}
			if tc.recover == nil {
				return
			}

			tc.recover(e.srv)
			e.clock.Advance(3 * time.Second) // past the backoff (at most MaxBackoff)
			before = e.srv.Stats()
			e.wantEcho(e.call(http.MethodGet, company, nil), company, nil)
			if d := e.since(before); d.TokenCalls != 1 || d.ReuseDetections != 0 || d.InvalidGrants != 0 {
				t.Fatalf("after recovery: token calls %d, reuse %d, invalid %d; want 1, 0, 0", d.TokenCalls, d.ReuseDetections, d.InvalidGrants)
			}
		})
	}

	t.Run("upstream 401 while the endpoint hangs", func(t *testing.T) {
		e := newOAuthEnv(t, oaConfig{broker: func(o *credentials.BrokerOptions) { o.TokenTimeout = tokenTimeout }})
		company := oaCompany(2)
		e.seed(10*time.Minute, company)
		e.srv.RevokeAccessTokens(company)
		e.srv.SetTokenDelay(time.Minute)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r, err := e.try(ctx, http.MethodGet, company, nil)
		if err != nil {
			t.Fatalf("caller not released: %v", err)
		}
		// The token was refused and the refresh timed out: the sidecar's own 502 (retry later),
		// not Pleo's 401, once the refresh's own timeout has passed.
		if r.status != http.StatusBadGateway || r.header.Get("Proxy-Status") == "" || !strings.Contains(string(r.body), "token_endpoint_error") {
			t.Fatalf("got %d %v %s, want the 502 token_endpoint_error problem", r.status, r.header, r.body)
		}
	})
}
