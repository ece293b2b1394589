package clients_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// rawConn is a plain TCP connection to the sidecar, for what no client library does on its
// own: pipelining, counting interim responses, raw bytes in the request target.
type rawConn struct {
	net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	return &rawConn{Conn: c, br: bufio.NewReader(c)}
}

func (c *rawConn) write(t *testing.T, s string) {
	t.Helper()
	if _, err := io.WriteString(c, s); err != nil {
		t.Fatal(err)
	}
}

// response reads one response (an interim one included) and its body.
func (c *rawConn) response(t *testing.T, method string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.ReadResponse(c.br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("reading a response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading a response body: %v", err)
	}
	return resp, b
}

// head is a request head with the suite's usual headers.
func head(method, target, key string, extra ...string) string {
	h := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: sidecar\r\nX-Case: %s\r\nX-Pleo-Company-Id: %s\r\nAuthorization: %s\r\n",
		method, target, key, oauthCompany, clientAuthorization)
	for _, e := range extra {
		h += e + "\r\n"
	}
	return h + "\r\n"
}

func TestRawSocket(t *testing.T) {
	sc := startSidecar(t)

	// Three requests written back to back before any answer is read: three answers, in order,
	// each to its own request.
	t.Run("pipelining", func(t *testing.T) {
		c := dialRaw(t, sc.addr)
		targets := []string{"/v1/pipe/1?a=1", "/v1/pipe/2?b=%zz", "/v1/pipe/3;x?c=a+b"}
		body := "pipelined body"
		c.write(t, head("GET", targets[0], "raw/pipe/1")+
			head("POST", targets[1], "raw/pipe/2", fmt.Sprintf("Content-Length: %d", len(body)), "Content-Type: text/plain")+body+
			head("GET", targets[2], "raw/pipe/3"))
		for i, target := range targets {
			resp, b := c.response(t, "GET")
			key := fmt.Sprintf("raw/pipe/%d", i+1)
			recs := sc.up.records(key)
			if resp.StatusCode != 200 || len(recs) != 1 {
				t.Fatalf("answer %d: status %d, %d upstream requests", i+1, resp.StatusCode, len(recs))
			}
			if recs[0].URI != target {
				t.Errorf("answer %d: the upstream got %q, the client sent %q", i+1, recs[0].URI, target)
			}
			if got := resp.Header.Get("X-Echo-Case"); got != key || !bytes.Equal(b, recs[0].RespBody) {
				t.Errorf("answer %d belongs to %q (body %q): out of order", i+1, got, b)
			}
		}
		if recs := sc.up.records("raw/pipe/2"); len(recs) == 1 && string(recs[0].Body) != body {
			t.Errorf("pipelined body %q, want %q", recs[0].Body, body)
		}
	})

	// Expect: 100-continue with a body the sidecar buffers: exactly one 100 Continue reaches
	// the caller, with or without the retry after a 401, and Expect does not go upstream.
	for _, reject := range []bool{false, true} {
		name := "expect-one-100"
		extra := []string{"Expect: 100-continue", "Content-Type: application/json", fmt.Sprintf("Content-Length: %d", len(bodyJSON))}
		if reject {
			name += "-401"
			extra = append(extra, "X-Test-Reject-First: yes")
		}
		t.Run(name, func(t *testing.T) {
			c := dialRaw(t, sc.addr)
			key := "raw/" + name
			c.write(t, head("POST", "/v1/receipts", key, extra...))
			resp, _ := c.response(t, "POST")
			if resp.StatusCode != 100 {
				t.Fatalf("first answer %d, want 100 Continue before the body is sent", resp.StatusCode)
			}
			c.write(t, string(bodyJSON))
			continues := 1
			for {
				resp, _ = c.response(t, "POST")
				if resp.StatusCode >= 200 {
					break
				}
				if resp.StatusCode == 100 {
					continues++
				}
			}
			if resp.StatusCode != 200 || continues != 1 {
				t.Errorf("final status %d after %d 100 Continue responses, want 200 after exactly 1", resp.StatusCode, continues)
			}
			for i, rec := range sc.up.records(key) {
				if rec.Header.Get("Expect") != "" {
					t.Errorf("attempt %d: Expect forwarded with a buffered body", i+1)
				}
				if !bytes.Equal(rec.Body, bodyJSON) {
					t.Errorf("attempt %d: body %q", i+1, rec.Body)
				}
			}
			// The connection is still usable: no interim response is left over for the next request.
			c.write(t, head("GET", "/v1/after-expect", key+"/next"))
			if resp, _ := c.response(t, "GET"); resp.StatusCode != 200 || resp.Header.Get("X-Echo-Case") != key+"/next" {
				t.Errorf("next request on the connection: %d %q", resp.StatusCode, resp.Header.Get("X-Echo-Case"))
			}
		})
	}

	// Unescaped UTF-8 and other bytes clients put in a target reach the upstream as sent.
	t.Run("raw-target-bytes", func(t *testing.T) {
		for i, target := range []string{"/v1/vendors/café/✓?q=✓&name=Jörg", "/v1/a%2Fb%2f/c?x=%zz&y=50%off&x=1;2", "/v1/x?a=1&&a=2&=3"} {
			key := fmt.Sprintf("raw/target/%d", i)
			c := dialRaw(t, sc.addr)
			c.write(t, head("GET", target, key))
			resp, _ := c.response(t, "GET")
			recs := sc.up.records(key)
			if resp.StatusCode != 200 || len(recs) != 1 || recs[0].URI != target {
				got := ""
				if len(recs) == 1 {
					got = recs[0].URI
				}
				t.Errorf("%q: status %d, the upstream got %q", target, resp.StatusCode, got)
			}
		}
	})

	// Java's default HttpClient asks for "Upgrade: h2c" on every new http:// connection and
	// carries on in HTTP/1.1 when the server does not switch: it must get its answer, and the
	// upgrade headers must not go upstream.
	t.Run("h2c-upgrade-as-java-sends-it", func(t *testing.T) {
		c := dialRaw(t, sc.addr)
		key := "raw/h2c-upgrade"
		c.write(t, head("GET", "/v1/vendors", key, "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAEAAEAAAAIAAAAAAAMAAAAAAAQBAAAAAAUAAEAAAAYABgAA"))
		resp, _ := c.response(t, "GET")
		if resp.StatusCode != 200 {
			t.Fatalf("status %d, want 200 in HTTP/1.1 (a server may ignore Upgrade; refusing it fails every Java HttpClient on its defaults)", resp.StatusCode)
		}
		for _, rec := range sc.up.records(key) {
			for _, h := range []string{"Upgrade", "Http2-Settings", "Connection"} {
				if v := rec.Header.Values(h); len(v) > 0 {
					t.Errorf("%s %q forwarded", h, v)
				}
			}
		}
	})

	// A WebSocket upgrade is refused by the sidecar (Pleo's API has none) and never forwarded.
	t.Run("websocket-upgrade-refused", func(t *testing.T) {
		c := dialRaw(t, sc.addr)
		key := "raw/websocket"
		c.write(t, head("GET", "/v1/stream", key, "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="))
		resp, _ := c.response(t, "GET")
		if n := len(sc.up.records(key)); n != 0 {
			t.Errorf("the upgrade request was forwarded (%d upstream requests)", n)
		}
		if resp.StatusCode < 400 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json") || resp.Header.Get("Proxy-Status") == "" {
			t.Errorf("status %d, Content-Type %q, Proxy-Status %q: want the sidecar's problem", resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Proxy-Status"))
		}
	})

	// curl --http2-prior-knowledge: served as HTTP/2 or refused, and the preface never goes
	// upstream (with the default company's credential) as a "PRI" request.
	t.Run("curl-http2-prior-knowledge", func(t *testing.T) {
		curl := need(t, "curl", "curl")
		out, err := exec.Command(curl, "-sS", "--max-time", "10", "--http2-prior-knowledge", "-o", "-", "-w", "\n%{http_code} %{http_version}",
			"-H", "X-Case: raw/h2-prior-knowledge", sc.url("/v1/vendors?via=h2")).CombinedOutput()
		if sc.up.any(func(r *record) bool { return r.Method == "PRI" || strings.HasPrefix(r.URI, "*") || r.URI == "/%2A" }) {
			t.Error("the HTTP/2 connection preface was forwarded upstream as a request")
		}
		if err == nil {
			recs := sc.up.records("raw/h2-prior-knowledge")
			if !strings.HasSuffix(string(out), "200 2") || len(recs) != 1 || recs[0].URI != "/v1/vendors?via=h2" {
				t.Errorf("curl succeeded but: %q, %d upstream requests", out, len(recs))
			}
		} else {
			t.Logf("refused: %v %s", err, out)
		}
		sc.healthy(t)
	})
}
