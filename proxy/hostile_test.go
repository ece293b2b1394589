package proxy_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/proxy"
)

// hostileServer serves the fixture's handler through proxy.NewServer, the data listener's
// real http.Server configuration, and returns its address.
func hostileServer(t *testing.T, f *fixture, tweak func(*http.Server)) string {
	t.Helper()
	u, _ := url.Parse(f.upstream.URL)
	broker, err := credentials.NewBroker(credentials.BrokerOptions{Store: f.store})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(broker.Close)
	h, err := proxy.New(proxy.Options{Upstream: u, Authorizer: broker, Tenants: broker, MaxReplayBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	srv := proxy.NewServer(h, nil)
	if tweak != nil {
		tweak(srv)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// exchangeRaw writes raw bytes and reads every response until the server closes or stays
// silent for a moment; it returns the status codes.
func exchangeRaw(t *testing.T, addr, raw string) []int {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	var codes []int
	br := bufio.NewReader(c)
	for {
		_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return codes
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		codes = append(codes, resp.StatusCode)
	}
}

func TestHostileRequests(t *testing.T) {
	hdr := "X-Pleo-Company-Id: " + companyA + "\r\n"
	smuggled := "GET /smuggled HTTP/1.1\r\nHost: x\r\n" + hdr + "\r\n"
	cases := []struct {
		name       string
		raw        string
		wantStatus int // first status; 0: the connection is closed without an answer
		maxForward int // requests the upstream may see
	}{
		// RFC 9112 6.3: Transfer-Encoding wins over Content-Length. What follows the chunked body is
		// the same client's next request on its own connection; every request is re-framed
		// upstream, so nothing can desynchronise the upstream connection.
		{"CL and TE both set", "POST /v1/x HTTP/1.1\r\nHost: a\r\n" + hdr + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled, 200, 2},
		{"two different Content-Lengths", "POST /v1/x HTTP/1.1\r\nHost: a\r\n" + hdr + "Content-Length: 3\r\nContent-Length: 40\r\n\r\nabc" + smuggled, 400, 0},
		{"TE not chunked", "POST /v1/x HTTP/1.1\r\nHost: a\r\n" + hdr + "Transfer-Encoding: gzip\r\n\r\n" + smuggled, 501, 0},
		// RFC 9112 5.2: a server replaces obs-fold with a space (Go does) or rejects it.
		{"obs-fold", "GET /v1/x HTTP/1.1\r\nHost: a\r\n" + hdr + "X-Folded: a\r\n b\r\nConnection: close\r\n\r\n", 200, 1},
		{"bare CR in a header value", "GET /v1/x HTTP/1.1\r\nHost: a\r\n" + hdr + "X-Bad: a\rb\r\n\r\n", 400, 0},
		{"NUL in a header value", "GET /v1/x HTTP/1.1\r\nHost: a\r\n" + hdr + "X-Bad: a\x00b\r\n\r\n", 400, 0},
		{"company id with CR LF injection", "GET /v1/x HTTP/1.1\r\nHost: a\r\nX-Pleo-Company-Id: " + companyA + "%0d%0aX: y\r\n\r\n", 400, 0},
		{"space before colon", "GET /v1/x HTTP/1.1\r\nHost: a\r\nX-Pleo-Company-Id : " + companyB + "\r\n" + hdr + "\r\n", 400, 0},
		{"oversized head", "GET /v1/x HTTP/1.1\r\nHost: a\r\n" + hdr + "X-Big: " + strings.Repeat("a", proxy.MaxHeaderBytes+8192) + "\r\n\r\n", 431, 0},
		{"Host with userinfo", "GET /v1/x HTTP/1.1\r\nHost: evil@127.0.0.2\r\n" + hdr + "Connection: close\r\n\r\n", 400, 0},
		{"pipelined second request for another company", "GET /v1/a HTTP/1.1\r\nHost: a\r\n" + hdr + "\r\nGET /v1/b HTTP/1.1\r\nHost: a\r\nX-Pleo-Company-Id: " + companyB + "\r\nConnection: close\r\n\r\n", 200, 2},
		{"Upgrade is refused, never forwarded", "GET /v1/ws HTTP/1.1\r\nHost: a\r\n" + hdr + "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 501, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			addr := hostileServer(t, f, nil)
			codes := exchangeRaw(t, addr, tc.raw)
			if tc.wantStatus == 0 && len(codes) != 0 || tc.wantStatus != 0 && (len(codes) == 0 || codes[0] != tc.wantStatus) {
				t.Fatalf("statuses %v, want first %d", codes, tc.wantStatus)
			}
			got := f.received()
			if len(got) > tc.maxForward {
				t.Fatalf("upstream received %d requests, want at most %d: %+v", len(got), tc.maxForward, got)
			}
			for _, g := range got {
				if g.Header.Get("Content-Length") != "" && g.Header.Get("Transfer-Encoding") != "" {
					t.Fatal("the upstream got both Content-Length and Transfer-Encoding")
				}
				if strings.ContainsAny(strings.Join(g.Header.Values("X-Folded"), ""), "\r\n") {
					t.Fatal("a folded header reached the upstream folded")
				}
				want := map[string]string{"/v1/a": keyA, "/v1/b": keyB, "/v1/ws": keyA, "/v1/x": keyA, "/smuggled": keyA}[g.Path]
				if g.Header.Get("Authorization") != credentials.BasicAuthorization(want) {
					t.Fatalf("%s went upstream with the wrong credential", g.Path)
				}
			}
		})
	}
}

func TestSlowHeadersAreCut(t *testing.T) {
	if proxy.NewServer(http.NotFoundHandler(), nil).ReadHeaderTimeout <= 0 {
		t.Fatal("the data listener has no ReadHeaderTimeout")
	}
	f := newFixture(t, nil)
	addr := hostileServer(t, f, func(s *http.Server) { s.ReadHeaderTimeout = 200 * time.Millisecond })
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /v1/x HTTP/1.1\r\nHost: a\r\n") // and never finish the head
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	_, err = io.ReadAll(c) // returns when the server closes the connection
	if err != nil {
		t.Fatalf("connection not closed by the server: %v", err)
	}
	if time.Since(start) > 3*time.Second {
		t.Fatal("slow head not cut by ReadHeaderTimeout")
	}
	if len(f.received()) != 0 {
		t.Fatal("a partial request reached the upstream")
	}
}
