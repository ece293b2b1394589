package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/metrics"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/proxy"
)

// wireServer serves a handler over the fixture's upstream and store through proxy.NewServer,
// the data listener's real http.Server, and returns its address.
func wireServer(t *testing.T, f *fixture, mutate func(*proxy.Options)) string {
	t.Helper()
	u, _ := url.Parse(f.upstream.URL)
	broker, err := credentials.NewBroker(credentials.BrokerOptions{Store: f.store})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(broker.Close)
	opts := proxy.Options{Upstream: u, Authorizer: broker, Tenants: broker, MaxReplayBytes: 1 << 20}
	if mutate != nil {
		mutate(&opts)
	}
	h, err := proxy.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv := proxy.NewServer(h, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// rawClient is one HTTP/1.1 connection driven byte by byte.
type rawClient struct {
	c  net.Conn
	br *bufio.Reader
}

func rawDial(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawClient{c: c, br: bufio.NewReader(c)}
}

func (rc *rawClient) write(t *testing.T, s string) {
	t.Helper()
	if _, err := io.WriteString(rc.c, s); err != nil {
		t.Fatal(err)
	}
}

// read reads one response (an informational one included) with its body.
func (rc *rawClient) read(t *testing.T) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body)
}

// TestRawTargetForwardedAsSent: Pleo receives the path and query exactly as sent, those
// ReverseProxy would re-encode or drop included.
func TestRawTargetForwardedAsSent(t *testing.T) {
	got := make(chan string, 1)
	f := newFixture(t, func(w http.ResponseWriter, r *http.Request) { got <- r.RequestURI })
	addr := wireServer(t, f, nil)
	for _, target := range []string{
		"/v1/expenses?filter=name;eq;bob&page=2",
		"/v1/expenses?search=50%off&page=2",
		"/v1/expenses?z=9&bad=%zz&a=1",
		"/v1/a%2Fb/a%2fb?q=a+b&q=%2B&q=c",
		"/v1/caf\xc3\xa9/%C3%A9?name=caf\xc3\xa9",
		"/v1/a\"b|c{d}?x=\"y\"",
		"/v1/x?",
		"/v1/x?a=1&a=2&b",
	} {
		rc := rawDial(t, addr)
		rc.write(t, "GET "+target+" HTTP/1.1\r\nHost: a\r\nX-Pleo-Company-Id: "+companyA+"\r\nConnection: close\r\n\r\n")
		if resp, body := rc.read(t); resp.StatusCode != 200 {
			t.Fatalf("%q: %d %s", target, resp.StatusCode, body)
		}
		if uri := <-got; uri != target {
			t.Errorf("sent %q, upstream received %q", target, uri)
		}
	}
}

// TestExpectContinueOnce: a caller that sends Expect: 100-continue sees one 100 Continue and
// then the answer: with a buffered body, across the 401 retry, and with a streamed one.
func TestExpectContinueOnce(t *testing.T) {
	body := strings.Repeat("b", 100)
	cases := []struct {
		name      string
		maxReplay int64
		rotate    bool // the upstream answers 401 once, after the key was rotated in the store
	}{
		{"buffered", 1 << 20, false},
		{"buffered with the 401 retry", 1 << 20, true},
		{"streamed", 10, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var f *fixture
			var once sync.Once
			f = newFixture(t, func(w http.ResponseWriter, r *http.Request) {
				// newFixture's upstream read the body already, which made Go's server send
				// its 100 Continue if the request still carried Expect.
				if !tc.rotate {
					return
				}
				rejected := false
				once.Do(func() {
					rejected = true
					c, _ := f.store.Get(r.Context(), companyA)
					c.APIKey = "key-a-rotated"
					if _, err := f.store.Update(r.Context(), c); err != nil {
						t.Error(err)
					}
				})
				if rejected {
					w.WriteHeader(http.StatusUnauthorized)
				}
			})
			addr := wireServer(t, f, func(o *proxy.Options) { o.MaxReplayBytes = tc.maxReplay })
			rc := rawDial(t, addr)
			rc.write(t, "POST /v1/x HTTP/1.1\r\nHost: a\r\nX-Pleo-Company-Id: "+companyA+
				"\r\nExpect: 100-continue\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n")
			resp, _ := rc.read(t)
			if resp.StatusCode != http.StatusContinue {
				t.Fatalf("first response %d, want 100", resp.StatusCode)
			}
			rc.write(t, body)
			resp, got := rc.read(t)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("after the body: %d %q, want 200 (a second 100 Continue is one too many)", resp.StatusCode, got)
			}
			// Nothing else follows on the connection: a second request reads its own answer.
			rc.write(t, "GET /v1/next HTTP/1.1\r\nHost: a\r\nX-Pleo-Company-Id: "+companyA+"\r\n\r\n")
			if resp, got := rc.read(t); resp.StatusCode != 200 {
				t.Fatalf("next request on the connection: %d %q", resp.StatusCode, got)
			}
			reqs := f.received()
			if reqs[len(reqs)-1].Path != "/v1/next" {
				t.Fatalf("upstream got %+v", reqs)
			}
			last := reqs[len(reqs)-2] // the POST's last attempt
			if last.Body != body {
				t.Fatalf("upstream got body %q", last.Body)
			}
			if tc.maxReplay > int64(len(body)) {
				for _, r := range reqs {
					if r.Header.Get("Expect") != "" {
						t.Fatalf("a buffered body's Expect went upstream: %v", r.Header)
					}
				}
			}
		})
	}
}

// TestCompanyQueryReadAsUpstreamReadsIt: every encoding of company_id counts for selection; a
// query that cannot be read unambiguously and names a company is refused, never forwarded.
func TestCompanyQueryReadAsUpstreamReadsIt(t *testing.T) {
	hdrA := "X-Pleo-Company-Id: " + companyA + "\r\n"
	cases := []struct {
		name, query, header string
		dflt                string
		status              int
		code                string
		wantKey             string // the key forwarded, for a 200
	}{
		{"encoded underscore against the header", "company%5Fid=" + companyB, hdrA, "", 400, "company_mismatch", ""},
		{"encoded letter against the header", "%63ompany_id=" + companyB, hdrA, "", 400, "company_mismatch", ""},
		{"encoded key against the tenant", "company%5fid=" + companyB, "X-Tenant-Id: tenant-a\r\n", "", 400, "company_mismatch", ""},
		{"encoded key over the default", "company%5Fid=" + companyB, "", companyA, 200, "", keyB},
		{"other case against the header", "Company_ID=" + companyB, hdrA, "", 400, "company_mismatch", ""},
		{"two companies", "company_id=" + companyA + "&company%5Fid=" + companyB, "", "", 400, "company_mismatch", ""},
		{"semicolon with company_id", "company_id=" + companyA + ";x=1", "", "", 400, "company_invalid", ""},
		{"company_id after a semicolon", "filter=x;company_id=" + companyB, hdrA, "", 400, "company_invalid", ""},
		{"bad escape in a company key", "company_id%zz=" + companyB, hdrA, "", 400, "company_invalid", ""},
		{"bad escape in the value", "company_id=%zz", hdrA, "", 400, "company_invalid", ""},
		{"semicolon without a company", "filter=name;eq;bob&page=2", hdrA, "", 200, "", keyA},
		{"bad escape elsewhere", "search=50%off&company_id=" + companyA, "", "", 200, "", keyA},
		{"encoded value", "company_id=" + strings.Replace(companyA, "-", "%2D", 1), "", "", 200, "", keyA},
		{"plain", "company_id=" + companyB, "", "", 200, "", keyB},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			addr := wireServer(t, f, func(o *proxy.Options) { o.DefaultCompanyID = tc.dflt })
			rc := rawDial(t, addr)
			rc.write(t, "GET /v1/x?"+tc.query+" HTTP/1.1\r\nHost: a\r\n"+tc.header+"Connection: close\r\n\r\n")
			resp, body := rc.read(t)
			if resp.StatusCode != tc.status {
				t.Fatalf("%d %s, want %d", resp.StatusCode, body, tc.status)
			}
			got := f.received()
			if tc.status != 200 {
				var p problemDoc
				if err := json.Unmarshal([]byte(body), &p); err != nil || p.Code != tc.code || resp.Header.Get("Proxy-Status") == "" {
					t.Fatalf("problem %s (%v), want code %s", body, err, tc.code)
				}
				if len(got) != 0 {
					t.Fatalf("forwarded: %+v", got)
				}
				return
			}
			if len(got) != 1 || got[0].Header.Get("Authorization") != basic(tc.wantKey) || got[0].RawQuery != tc.query {
				t.Fatalf("forwarded %+v, want key %s and query %q", got, tc.wantKey, tc.query)
			}
		})
	}
}

func basic(key string) string { return credentials.BasicAuthorization(key) }

// TestHTTP2CleartextServed: HTTP/2 with prior knowledge is served as HTTP/2; its preface is
// never forwarded, not even with a default company.
func TestHTTP2CleartextServed(t *testing.T) {
	f := newFixture(t, nil)
	addr := wireServer(t, f, func(o *proxy.Options) { o.DefaultCompanyID = companyA })
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	client := &http.Client{Transport: &http.Transport{Protocols: &protocols}, Timeout: 10 * time.Second}
	for i := range 2 {
		resp, err := client.Post("http://"+addr+"/v1/h2?n="+strconv.Itoa(i), "text/plain", strings.NewReader("h2 body"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.ProtoMajor != 2 || string(body) != "ok POST /v1/h2" {
			t.Fatalf("%s %d %q", resp.Proto, resp.StatusCode, body)
		}
	}
	// The bare preface, as a client that gives up after it would send.
	rc := rawDial(t, addr)
	rc.write(t, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
	_ = rc.c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	_, _ = io.Copy(io.Discard, rc.c)
	// PRI as an HTTP/1 method is refused.
	rc = rawDial(t, addr)
	rc.write(t, "PRI /v1/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
	if resp, body := rc.read(t); resp.StatusCode != 405 || !strings.Contains(body, "method_not_allowed") {
		t.Fatalf("PRI over HTTP/1.1: %d %s", resp.StatusCode, body)
	}
	for _, r := range f.received() {
		if r.Method != http.MethodPost || r.Path != "/v1/h2" || r.Body != "h2 body" {
			t.Fatalf("the upstream received %s %s %q", r.Method, r.Path, r.Body)
		}
	}
	if n := len(f.received()); n != 2 {
		t.Fatalf("the upstream received %d requests, want 2", n)
	}
}

// TestUpgradeRefused: a protocol upgrade is answered by the sidecar, never forwarded; an
// offer of h2c alone (Java's HttpClient makes one by default) is declined: the request is
// served over HTTP/1.1 and the offer does not go upstream.
func TestUpgradeRefused(t *testing.T) {
	f := newFixture(t, nil)
	addr := wireServer(t, f, nil)
	for _, up := range []string{
		"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
		"Connection: Upgrade\r\nUpgrade: h2c, websocket\r\n",
		"Upgrade: websocket\r\n",
	} {
		rc := rawDial(t, addr)
		rc.write(t, "GET /v1/x HTTP/1.1\r\nHost: a\r\nX-Pleo-Company-Id: "+companyA+"\r\n"+up+"\r\n")
		resp, body := rc.read(t)
		if resp.StatusCode != http.StatusNotImplemented || resp.Header.Get("Content-Type") != "application/problem+json" ||
			!strings.Contains(resp.Header.Get("Proxy-Status"), "upgrade_not_supported") {
			t.Fatalf("%q: %d %v %s", up, resp.StatusCode, resp.Header, body)
		}
	}
	if got := f.received(); len(got) != 0 {
		t.Fatalf("forwarded: %+v", got)
	}

	rc := rawDial(t, addr)
	rc.write(t, "POST /v1/x HTTP/1.1\r\nHost: a\r\nX-Pleo-Company-Id: "+companyA+
		"\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAEAAEAAAAIAAAABAAMAAABkAAQBAAAAAAUAAEAA\r\nContent-Length: 2\r\n\r\nhi")
	resp, body := rc.read(t)
	if resp.StatusCode != 200 || resp.ProtoMajor != 1 || resp.Header.Get("Upgrade") != "" {
		t.Fatalf("h2c offer: %s %d %v %s", resp.Proto, resp.StatusCode, resp.Header, body)
	}
	got := f.received()
	if len(got) != 1 || got[0].Body != "hi" {
		t.Fatalf("forwarded %+v", got)
	}
	for _, h := range []string{"Upgrade", "Http2-Settings", "Connection"} {
		if v := got[0].Header.Values(h); len(v) != 0 {
			t.Fatalf("the upstream got %s: %q", h, v)
		}
	}
}

// TestOversizedHeadIsAProblem: a request line or header beyond the limit gets the sidecar's
// own 431, on a new connection and on a reused one alike.
func TestOversizedHeadIsAProblem(t *testing.T) {
	f := newFixture(t, nil)
	addr := wireServer(t, f, nil)
	longURL := "/v1/x?q=" + strings.Repeat("a", 70_000)
	longHeader := "X-Big: " + strings.Repeat("a", 70_000) + "\r\n"
	check := func(t *testing.T, rc *rawClient, what string) {
		t.Helper()
		resp, body := rc.read(t)
		var p problemDoc
		_ = json.Unmarshal([]byte(body), &p)
		if resp.StatusCode != 431 || resp.Header.Get("Content-Type") != "application/problem+json" || p.Code != "request_header_too_large" ||
			!strings.HasPrefix(resp.Header.Get("Proxy-Status"), "pleo-auth-proxy") {
			t.Fatalf("%s: %d %v %.200s", what, resp.StatusCode, resp.Header, body)
		}
	}
	for _, c := range []struct{ name, target, header string }{
		{"long URL", longURL, ""},
		{"long header", "/v1/x", longHeader},
	} {
		rc := rawDial(t, addr)
		rc.write(t, "GET "+c.target+" HTTP/1.1\r\nHost: a\r\nX-Pleo-Company-Id: "+companyA+"\r\n"+c.header+"\r\n")
		check(t, rc, c.name+" on a new connection")

		rc = rawDial(t, addr)
		rc.write(t, "GET /v1/first HTTP/1.1\r\nHost: a\r\nX-Pleo-Company-Id: "+companyA+"\r\n\r\n")
		if resp, _ := rc.read(t); resp.StatusCode != 200 {
			t.Fatalf("first request: %d", resp.StatusCode)
		}
		rc.write(t, "GET "+c.target+" HTTP/1.1\r\nHost: a\r\nX-Pleo-Company-Id: "+companyA+"\r\n"+c.header+"\r\n")
		check(t, rc, c.name+" on a reused connection")
	}
	for _, r := range f.received() {
		if r.Path != "/v1/first" {
			t.Fatalf("forwarded %s", r.Path)
		}
	}
}

// TestCallerGoneMidResponseIs499: a caller that hangs up during a download is logged and
// counted as 499, not as the 200 already sent.
func TestCallerGoneMidResponseIs499(t *testing.T) {
	stop := make(chan struct{})
	defer close(stop)
	f := newFixture(t, func(w http.ResponseWriter, r *http.Request) {
		chunk := bytes.Repeat([]byte("d"), 32<<10)
		for {
			if _, err := w.Write(chunk); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-stop:
				return
			case <-r.Context().Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	})
	logs := &syncBuffer{}
	reg := prometheus.NewRegistry()
	addr := wireServer(t, f, func(o *proxy.Options) {
		o.Logger = slog.New(slog.NewJSONHandler(logs, nil))
		o.Metrics = metrics.New(reg)
	})
	rc := rawDial(t, addr)
	rc.write(t, "GET /v1/download HTTP/1.1\r\nHost: a\r\nX-Pleo-Company-Id: "+companyA+"\r\n\r\n")
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", resp, err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	rc.c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var line map[string]any
	for line == nil {
		for l := range strings.SplitSeq(logs.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "request" && m["path"] == "/v1/download" {
				line = m
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no access line: %s", logs.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	if line["status"] != float64(499) {
		t.Fatalf("access line %v, want status 499", line)
	}
	counts := gatherCounts(t, reg)
	var n499, n200 float64
	for series, v := range counts {
		if strings.HasPrefix(series, "pleo_proxy_requests_total{") && strings.Contains(series, `code="499"`) {
			n499 += v
		}
		if strings.HasPrefix(series, "pleo_proxy_requests_total{") && strings.Contains(series, `code="200"`) {
			n200 += v
		}
	}
	if n499 != 1 || n200 != 0 {
		t.Fatalf("requests counted: 499 %v, 200 %v", n499, n200)
	}
}

// TestSlowHeadersCannotHoldEverySlot: with every slot held by connections that send one
// header line a second (a slowloris), an authenticated caller is served promptly: the
// connections still reading their headers are closed to make room.
func TestSlowHeadersCannotHoldEverySlot(t *testing.T) {
	const max = 8
	const token = "client-token-0123456789"
	f := newFixture(t, nil, func(o *proxy.Options) { o.ClientTokens = []credentials.Secret{token} })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := proxy.NewServer(f.proxy.Config.Handler, nil)
	if srv.ReadHeaderTimeout != proxy.ClientTokenReadHeaderTimeout {
		t.Fatalf("ReadHeaderTimeout %v with client tokens, want %v", srv.ReadHeaderTimeout, proxy.ClientTokenReadHeaderTimeout)
	}
	counts := &connCounts{}
	go srv.Serve(proxy.LimitListener(ln, max, counts))
	t.Cleanup(func() { srv.Close() })
	addr := ln.Addr().String()

	stop := make(chan struct{})
	var slow sync.WaitGroup
	t.Cleanup(func() { close(stop); slow.Wait() })
	for i := range max {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		slow.Go(func() {
			defer c.Close()
			_, _ = io.WriteString(c, "GET /v1/slow HTTP/1.1\r\n")
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				case <-time.After(time.Second):
				}
				if _, err := io.WriteString(c, "X-Slow-"+strconv.Itoa(i)+": "+strconv.Itoa(n)+"\r\n"); err != nil {
					return // closed by the server
				}
			}
		})
	}
	// Every slow connection holds a slot.
	for deadline := time.Now().Add(5 * time.Second); counts.open.Load() < max; {
		if time.Now().After(deadline) {
			t.Fatalf("%d slow connections served, want %d", counts.open.Load(), max)
		}
		time.Sleep(time.Millisecond)
	}

	done := make(chan error, 1)
	go func() {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		_, _ = io.WriteString(c, "GET /v1/x HTTP/1.1\r\nHost: a\r\nProxy-Authorization: Bearer "+token+
			"\r\nX-Pleo-Company-Id: "+companyA+"\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err == nil && resp.StatusCode != 200 {
			err = errors.New(resp.Status)
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the authenticated caller was not served within 2 s while slow connections held every slot")
	}
}

// TestAPIKeyRotatedInFileUsedByRetry: the upstream rejects an API key that was just rotated
// in the credentials file (replaced by rename, as an operator or a secret mount does); the
// retry sends the new key at once, without waiting for the file store's poll.
func TestAPIKeyRotatedInFileUsedByRetry(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/credentials.json"
	writeKey := func(key string) {
		t.Helper()
		doc := `{"credentials":[{"company_id":"` + companyA + `","type":"integrated_api_key","api_key":"` + key + `"}]}`
		tmp := path + ".new"
		if err := os.WriteFile(tmp, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	writeKey("key-old")
	store, err := credentials.OpenFileStore(path, credentials.FileStoreOptions{PollInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	broker, err := credentials.NewBroker(credentials.BrokerOptions{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(broker.Close)

	var mu sync.Mutex
	var sent []string
	upstream := newFixture(t, func(w http.ResponseWriter, r *http.Request) {
		auth := r.Header.Get("Authorization")
		mu.Lock()
		sent = append(sent, auth)
		mu.Unlock()
		if auth == basic("key-old") {
			writeKey("key-new") // rotated while the request was out
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if auth != basic("key-new") {
			w.WriteHeader(http.StatusUnauthorized)
		}
	}).upstream
	u, _ := url.Parse(upstream.URL)
	h, err := proxy.New(proxy.Options{Upstream: u, Authorizer: broker, Tenants: broker, MaxReplayBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest("POST", "/v1/x", strings.NewReader("body"))
	req.Header.Set("X-Pleo-Company-Id", companyA)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	mu.Lock()
	defer mu.Unlock()
	if rec.Code != 200 || len(sent) != 2 || sent[1] != basic("key-new") {
		t.Fatalf("status %d after %d attempts, want 200 after the retry with the new key", rec.Code, len(sent))
	}
}

// TestHTTP2CleartextUnderTheConnectionLimit: an HTTP/2 connection holds one slot and, idle,
// is closed to make room for a waiting one, as an HTTP/1.1 keep-alive connection is.
func TestHTTP2CleartextUnderTheConnectionLimit(t *testing.T) {
	l := limitedServer(t, 1, nil)
	h2c := func() *http.Client {
		var protocols http.Protocols
		protocols.SetUnencryptedHTTP2(true)
		return &http.Client{Transport: &http.Transport{Protocols: &protocols}, Timeout: 10 * time.Second}
	}
	get := func(c *http.Client) {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+l.addr+"/v1/x", nil)
		req.Header.Set("X-Pleo-Company-Id", companyA)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
			t.Fatalf("%s %d", resp.Proto, resp.StatusCode)
		}
	}
	first, second := h2c(), h2c()
	get(first)
	get(first) // the same connection
	get(second)
	if n := l.counts.waited.Load(); n != 1 {
		t.Fatalf("%d connections waited, want 1", n)
	}
}

// TestExpectContinueStreamedLateUpstream: a streamed body's Expect goes upstream; when the
// upstream is slower to answer 100 Continue than the transport waits, the body goes on, the
// caller gets the sidecar's 100 Continue, and the upstream's late one is not relayed.
func TestExpectContinueStreamedLateUpstream(t *testing.T) {
	f := newFixture(t, nil)
	// A raw upstream: it reads the head, waits past the transport's ExpectContinueTimeout
	// (1 s), then sends its 100 Continue, reads the body and answers.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	gotBody := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		time.Sleep(1500 * time.Millisecond)
		_, _ = io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
		b, _ := io.ReadAll(req.Body)
		gotBody <- string(b)
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	}()
	u, _ := url.Parse("http://" + ln.Addr().String())
	addr := wireServer(t, f, func(o *proxy.Options) { o.Upstream = u; o.MaxReplayBytes = 10 })
	body := strings.Repeat("s", 100)
	rc := rawDial(t, addr)
	rc.write(t, "POST /v1/x HTTP/1.1\r\nHost: a\r\nX-Pleo-Company-Id: "+companyA+
		"\r\nExpect: 100-continue\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n")
	if resp, _ := rc.read(t); resp.StatusCode != http.StatusContinue {
		t.Fatalf("first response %d, want 100", resp.StatusCode)
	}
	rc.write(t, body)
	if resp, got := rc.read(t); resp.StatusCode != http.StatusOK || got != "ok" {
		t.Fatalf("after the body: %d %q, want 200 ok", resp.StatusCode, got)
	}
	if b := <-gotBody; b != body {
		t.Fatalf("upstream got %q", b)
	}
}

// TestAcceptEncodingAsSent: the transport adds no Accept-Encoding of its own, and a gzip
// response the caller asked for reaches it as Pleo sent it.
func TestAcceptEncodingAsSent(t *testing.T) {
	f := newFixture(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Accept-Encoding") == "gzip" {
			w.Header().Set("Content-Encoding", "gzip")
			_, _ = w.Write([]byte("\x1f\x8b not really"))
			return
		}
		_, _ = io.WriteString(w, "plain")
	})
	addr := wireServer(t, f, func(o *proxy.Options) {
		o.Transport = proxy.NewUpstreamTransport(10*time.Second, proxy.DefaultMaxConns)
	})
	rc := rawDial(t, addr)
	rc.write(t, "GET /v1/x HTTP/1.1\r\nHost: a\r\nX-Pleo-Company-Id: "+companyA+"\r\n\r\n")
	if resp, body := rc.read(t); resp.StatusCode != 200 || body != "plain" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	rc.write(t, "GET /v1/x HTTP/1.1\r\nHost: a\r\nX-Pleo-Company-Id: "+companyA+"\r\nAccept-Encoding: gzip\r\n\r\n")
	if resp, body := rc.read(t); resp.StatusCode != 200 || body != "\x1f\x8b not really" || resp.Header.Get("Content-Encoding") != "gzip" {
		t.Fatalf("%d %v %q", resp.StatusCode, resp.Header, body)
	}
	got := f.received()
	if v := got[0].Header.Values("Accept-Encoding"); len(v) != 0 {
		t.Fatalf("the upstream got Accept-Encoding %q the caller did not send", v)
	}
}
