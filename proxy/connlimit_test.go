package proxy_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/testenv"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/proxy"
)

// connCounts is a proxy.ConnMetrics that srv.counts.
type connCounts struct{ open, waited atomic.Int64 }

func (c *connCounts) ClientConnOpened() { c.open.Add(1) }
func (c *connCounts) ClientConnClosed() { c.open.Add(-1) }
func (c *connCounts) ClientConnWaited() { c.waited.Add(1) }

// limited is a proxy served through proxy.NewServer on a loopback listener limited by
// proxy.LimitListener, as the sidecar serves it.
type limited struct {
	addr     string
	counts   *connCounts
	srv      *http.Server
	served   chan error // Serve's result
	returned sync.Once
}

// serveReturned asserts, the first time it is called, that Serve returns
// http.ErrServerClosed within 5 s.
func (l *limited) serveReturned(t *testing.T) {
	t.Helper()
	l.returned.Do(func() {
		select {
		case err := <-l.served:
			if !errors.Is(err, http.ErrServerClosed) {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return within 5 s of Close or Shutdown")
		}
	})
}

// limitedServer serves a proxy (to upstream, with the fixture's credentials) limited to max
// client connections. It is closed at cleanup if the test has not closed it.
func limitedServer(t *testing.T, max int, upstream http.HandlerFunc) *limited {
	t.Helper()
	f := newFixture(t, upstream)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &limited{addr: ln.Addr().String(), counts: &connCounts{},
		srv: proxy.NewServer(f.proxy.Config.Handler, nil), served: make(chan error, 1)}
	go func() { l.served <- l.srv.Serve(proxy.LimitListener(ln, max, l.counts)) }()
	t.Cleanup(func() {
		_ = l.srv.Close()
		l.serveReturned(t)
	})
	return l
}

// gate holds upstream requests until it is opened. Open it at cleanup too, registered after
// limitedServer (cleanups run last first), so that a failed test does not leave the
// fixture's upstream waiting for its handlers.
type gate struct {
	ch   chan struct{}
	once sync.Once
}

func newGate() *gate  { return &gate{ch: make(chan struct{})} }
func (g *gate) wait() { <-g.ch }
func (g *gate) open() { g.once.Do(func() { close(g.ch) }) }

// rawConn is one client connection that sends requests by hand, so that a test decides
// when connections open, are reused and close.
type rawConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c, r: bufio.NewReader(c)}
}

func (rc *rawConn) send(path string) {
	rc.t.Helper()
	if _, err := io.WriteString(rc.c, "GET "+path+" HTTP/1.1\r\nHost: sidecar\r\nX-Pleo-Company-Id: "+companyA+"\r\n\r\n"); err != nil {
		rc.t.Fatal(err)
	}
}

// response reads one response and its body, within 5 s.
func (rc *rawConn) response() *http.Response {
	rc.t.Helper()
	_ = rc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(rc.r, nil)
	if err != nil {
		rc.t.Fatalf("reading a response: %v", err)
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		rc.t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// closedByServer reports whether the server closed the connection within 5 s: the read
// ends, with EOF or (when the server closed with a request unread) a reset.
func (rc *rawConn) closedByServer() bool {
	_ = rc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := rc.r.ReadByte()
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
}

// TestLimitListenerBound shows that a connection beyond the bound is not served until an
// earlier one closes, and is served then.
func TestLimitListenerBound(t *testing.T) {
	var entered atomic.Int64
	release := newGate()
	srv := limitedServer(t, 2, func(w http.ResponseWriter, r *http.Request) {
		entered.Add(1)
		if r.URL.Path == "/block" {
			release.wait()
		}
	})
	t.Cleanup(release.open)
	a, b, c := dial(t, srv.addr), dial(t, srv.addr), dial(t, srv.addr)
	a.send("/block")
	b.send("/block")
	testenv.WaitFor(t, "two requests in the handler", 5*time.Second, func() bool { return entered.Load() == 2 })
	c.send("/fast")
	// The third connection is accepted and waits for a slot: the accept loop is inside
	// LimitListener's Accept, so no request of it can reach the handler meanwhile.
	testenv.WaitFor(t, "the third connection to wait", 5*time.Second, func() bool { return srv.counts.waited.Load() == 1 })
	if n := entered.Load(); n != 2 {
		t.Fatalf("%d requests in the handler while the bound is 2", n)
	}
	if n := srv.counts.open.Load(); n != 2 {
		t.Fatalf("open connections = %d, want 2", n)
	}
	release.open()
	for _, rc := range []*rawConn{a, b, c} {
		if resp := rc.response(); resp.StatusCode != http.StatusOK {
			t.Errorf("status %d", resp.StatusCode)
		}
	}
	if n := entered.Load(); n != 3 {
		t.Errorf("%d requests served, want 3", n)
	}
	a.c.Close()
	b.c.Close()
	c.c.Close()
	testenv.WaitFor(t, "every connection to be counted closed", 5*time.Second, func() bool { return srv.counts.open.Load() == 0 })
}

// TestLimitListenerMakesRoom shows how the limit makes room for a waiting connection: an
// idle keep-alive connection is closed, and a busy one is answered with "Connection: close"
// and then closed. Without a waiter, keep-alive is left alone.
func TestLimitListenerMakesRoom(t *testing.T) {
	t.Run("no waiter: keep-alive", func(t *testing.T) {
		srv := limitedServer(t, 1, func(http.ResponseWriter, *http.Request) {})
		a := dial(t, srv.addr)
		for range 3 {
			a.send("/")
			if resp := a.response(); resp.Close {
				t.Fatal("a response said Connection: close with no connection waiting")
			}
		}
		if srv.counts.waited.Load() != 0 {
			t.Errorf("waited = %d, want 0", srv.counts.waited.Load())
		}
	})
	t.Run("idle connection closed", func(t *testing.T) {
		srv := limitedServer(t, 1, func(http.ResponseWriter, *http.Request) {})
		a := dial(t, srv.addr)
		a.send("/")
		a.response() // a is now idle, kept alive
		b := dial(t, srv.addr)
		b.send("/")
		if resp := b.response(); resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if !a.closedByServer() {
			t.Error("the idle connection was not closed to make room")
		}
		if srv.counts.waited.Load() != 1 {
			t.Errorf("waited = %d, want 1", srv.counts.waited.Load())
		}
	})
	t.Run("busy connection closed after its answer", func(t *testing.T) {
		release := newGate()
		srv := limitedServer(t, 1, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/block" {
				release.wait()
			}
		})
		t.Cleanup(release.open)
		a := dial(t, srv.addr)
		a.send("/block")
		b := dial(t, srv.addr)
		b.send("/")
		testenv.WaitFor(t, "the second connection to wait", 5*time.Second, func() bool { return srv.counts.waited.Load() == 1 })
		release.open()
		if resp := a.response(); !resp.Close {
			t.Error("the answer on the busy connection did not say Connection: close while another waited")
		}
		if !a.closedByServer() {
			t.Error("the busy connection stayed open after its answer")
		}
		if resp := b.response(); resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
}

// TestLimitListenerShutdownWhileWaiting shows that a graceful shutdown releases an Accept
// that waits for a slot: Serve returns at once, the waiting connection is closed unserved,
// and the request in flight is still answered.
func TestLimitListenerShutdownWhileWaiting(t *testing.T) {
	var upstreamHits atomic.Int64
	release := newGate()
	srv := limitedServer(t, 1, func(http.ResponseWriter, *http.Request) { upstreamHits.Add(1); release.wait() })
	t.Cleanup(release.open)
	a := dial(t, srv.addr)
	a.send("/")
	testenv.WaitFor(t, "the first request to reach the upstream", 5*time.Second, func() bool { return upstreamHits.Load() == 1 })
	b := dial(t, srv.addr)
	b.send("/")
	testenv.WaitFor(t, "the second connection to wait", 5*time.Second, func() bool { return srv.counts.waited.Load() == 1 })
	shutdown := make(chan error, 1)
	go func() { shutdown <- srv.srv.Shutdown(context.Background()) }()
	srv.serveReturned(t) // while the first request is still in flight
	if !b.closedByServer() {
		t.Error("the waiting connection was not closed at shutdown")
	}
	release.open()
	if resp := a.response(); resp.StatusCode != http.StatusOK {
		t.Errorf("the request in flight at shutdown: status %d", resp.StatusCode)
	}
	if err := <-shutdown; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if n := upstreamHits.Load(); n != 1 {
		t.Errorf("%d requests reached the upstream, want 1", n)
	}
}

// TestLimitListenerUnlimited shows that a bound below 1 leaves the listener as it is.
func TestLimitListenerUnlimited(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if got := proxy.LimitListener(ln, 0, nil); got != ln {
		t.Errorf("LimitListener(ln, 0) = %T, want ln itself", got)
	}
}
