package clients_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/oauthtest"
)

// sidecarBin is the sidecar built once for the whole test process by TestMain.
var sidecarBin string

func TestMain(m *testing.M) {
	// PLEO_PROXY_TEST_BINARY runs the suite against a sidecar built elsewhere (another
	// branch, a release) instead of this checkout's.
	if bin := os.Getenv("PLEO_PROXY_TEST_BINARY"); bin != "" {
		sidecarBin = bin
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "pleo-auth-proxy-clients")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	sidecarBin = filepath.Join(dir, "pleo-auth-proxy")
	if out, err := exec.Command("go", "build", "-o", sidecarBin, "..").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building the sidecar: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

const (
	oauthCompany = "5a1c0000-0000-4000-8000-0000000000c1"
	keyCompany   = "9d2e0000-0000-4000-8000-0000000000c2"
	apiKey       = "clients-suite-api-key"
	// maxReplay is the sidecar's PLEO_PROXY_MAX_REPLAY_BYTES: bodies up to it are buffered
	// and replayed after a 401, larger ones streamed.
	maxReplay = 64 << 10
	// clientAuthorization is what every case sends as its own Authorization: the sidecar must
	// drop it.
	clientAuthorization = "Bearer client-own-token"
)

// sidecar is a running sidecar process and what it is connected to.
type sidecar struct {
	addr, admin string // data and admin listeners, host:port
	up          *upstream
	oauth       *oauthtest.Server

	mu   sync.Mutex
	logs []map[string]any // the JSON log lines so far
}

// startSidecar starts a recording upstream, a real OAuth server and the sidecar with a file
// store holding an oauth2 company and an API-key company (the default company).
func startSidecar(t *testing.T) *sidecar {
	t.Helper()
	s := &sidecar{up: newUpstream(t), oauth: oauthtest.NewServer(t, oauthtest.Options{})}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tok, err := s.oauth.Grant(ctx, oauthCompany)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	store := filepath.Join(dir, "credentials.json")
	exp := tok.Expiry.UTC()
	file := credentials.File{Credentials: []credentials.Record{
		{CompanyID: oauthCompany, Type: "oauth2", AccessToken: tok.AccessToken, RefreshToken: tok.RefreshToken, ExpiresAt: &exp},
		{CompanyID: keyCompany, Type: "integrated_api_key", APIKey: apiKey},
	}}
	b, err := json.Marshal(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(store, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sidecarBin, "serve")
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"PLEO_PROXY_LOG_FORMAT=json",
		"PLEO_PROXY_STORE=file://" + store,
		"PLEO_PROXY_UPSTREAM_URL=" + s.up.srv.URL,
		"PLEO_PROXY_LISTEN_ADDR=127.0.0.1:0",
		"PLEO_PROXY_ADMIN_ADDR=127.0.0.1:0",
		"PLEO_PROXY_OAUTH_CLIENT_ID=" + s.oauth.ClientID(),
		"PLEO_PROXY_OAUTH_CLIENT_SECRET=" + s.oauth.ClientSecret(),
		"PLEO_PROXY_OAUTH_TOKEN_URL=" + s.oauth.TokenURL(),
		"PLEO_PROXY_DEFAULT_COMPANY_ID=" + keyCompany,
		fmt.Sprintf("PLEO_PROXY_MAX_REPLAY_BYTES=%d", maxReplay),
		"PLEO_PROXY_UPSTREAM_TIMEOUT=20s",
		"PLEO_PROXY_SHUTDOWN_TIMEOUT=2s",
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	started := make(chan map[string]any, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var line map[string]any
			if json.Unmarshal(sc.Bytes(), &line) != nil {
				continue
			}
			s.mu.Lock()
			s.logs = append(s.logs, line)
			s.mu.Unlock()
			if line["msg"] == "pleo-auth-proxy started" {
				started <- line
			}
		}
	}()
	select {
	case line := <-started:
		s.addr, _ = line["listen"].(string)
		s.admin, _ = line["admin"].(string)
	case <-time.After(20 * time.Second):
		t.Fatal("the sidecar logged no start-up line in 20s")
	}
	return s
}

// url is the sidecar's data listener URL for a request target (path and query).
func (s *sidecar) url(target string) string { return "http://" + s.addr + target }

// accessLog returns the access log lines (msg "request") whose request_id is id.
func (s *sidecar) accessLog(id string) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range s.logs {
		if l["msg"] == "request" && l["request_id"] == id {
			out = append(out, l)
		}
	}
	return out
}

// healthy fails the test unless the sidecar answers /healthz and proxies a request.
func (s *sidecar) healthy(t *testing.T) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + s.admin + "/healthz")
	if err != nil {
		t.Fatalf("sidecar /healthz: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("sidecar /healthz: %d", resp.StatusCode)
	}
	req, _ := http.NewRequest("GET", s.url("/v1/health-probe"), nil)
	req.Header.Set("X-Case", "health/"+t.Name())
	resp, err = client.Do(req)
	if err != nil {
		t.Fatalf("sidecar proxying: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("sidecar proxying: %d", resp.StatusCode)
	}
}

// requestsWithCode sums pleo_proxy_requests_total over the series with this code label.
func (s *sidecar) requestsWithCode(t *testing.T, code string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + s.admin + "/metrics")
	if err != nil {
		t.Fatalf("/metrics: %v", err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "pleo_proxy_requests_total{") || !strings.Contains(line, `code="`+code+`"`) {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v); err == nil {
			sum += v
		}
	}
	return sum
}

// record is one request as the upstream received it.
type record struct {
	Method, URI, Proto, Host string
	Header                   http.Header
	Body                     []byte
	ContentLength            int64
	TransferEncoding         []string
	// Status and RespBody are what the upstream answered.
	Status   int
	RespBody []byte
	// Event2At is when an SSE answer began writing its second event.
	Event2At time.Time
	// Gone is closed when a streamed download saw its request cancelled (the caller left).
	Gone chan struct{}
}

// upstream is a recording upstream. Requests are keyed by their X-Case header; the X-Test-*
// headers (never sent on a case's direct leg) choose the answer:
//
//	X-Test-Reject-First: yes   401 to the case's first request (after reading its body)
//	X-Test-Response: gzip      a gzip-encoded answer when Accept-Encoding allows it
//	X-Test-Response: sse       text/event-stream: event "one", a pause, event "two"
//	X-Test-Response: hangup    a download that goes on until the caller leaves (10 s at most)
//	X-Test-Response: 404       Pleo's own 404
//
// Otherwise it answers 200 with a JSON description of the request (the echo).
type upstream struct {
	srv  *httptest.Server
	mu   sync.Mutex
	recs map[string][]*record
	all  []*record
}

// gzipPlain is the text the gzip answer carries.
const gzipPlain = "compressed hello from upstream, compressed hello from upstream\n"

var gzipBytes = func() []byte {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	_, _ = zw.Write([]byte(gzipPlain))
	_ = zw.Close()
	return b.Bytes()
}()

// sseGap is how long the SSE answer waits between its two events.
const sseGap = 700 * time.Millisecond

func newUpstream(t *testing.T) *upstream {
	u := &upstream{recs: map[string][]*record{}}
	u.srv = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstream) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rec := &record{Method: r.Method, URI: r.RequestURI, Proto: r.Proto, Host: r.Host, Header: r.Header.Clone(),
		Body: body, ContentLength: r.ContentLength, TransferEncoding: r.TransferEncoding, Gone: make(chan struct{})}
	key := r.Header.Get("X-Case")
	u.mu.Lock()
	first := len(u.recs[key]) == 0
	u.recs[key] = append(u.recs[key], rec)
	u.all = append(u.all, rec)
	u.mu.Unlock()
	respond := func(status int, b []byte) {
		u.mu.Lock()
		rec.Status, rec.RespBody = status, b
		u.mu.Unlock()
		w.WriteHeader(status)
		_, _ = w.Write(b)
	}
	if r.Header.Get("X-Test-Reject-First") != "" && first {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		respond(http.StatusUnauthorized, []byte(`{"error":"token expired","case":"`+key+`"}`))
		return
	}
	switch r.Header.Get("X-Test-Response") {
	case "gzip":
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Vary", "Accept-Encoding")
		if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			w.Header().Set("Content-Encoding", "gzip")
			respond(200, gzipBytes)
			return
		}
		respond(200, []byte(gzipPlain))
	case "sse":
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		w.WriteHeader(200)
		rc := http.NewResponseController(w)
		_, _ = io.WriteString(w, "data: one\n\n")
		_ = rc.Flush()
		select {
		case <-time.After(sseGap):
		case <-r.Context().Done():
			return
		}
		u.mu.Lock()
		rec.Status, rec.Event2At = 200, time.Now()
		u.mu.Unlock()
		_, _ = io.WriteString(w, "data: two\n\n")
		_ = rc.Flush()
	case "hangup":
		w.Header().Set("Content-Type", "application/octet-stream")
		w.WriteHeader(200)
		rc := http.NewResponseController(w)
		chunk := bytes.Repeat([]byte("0123456789abcdef"), 4<<10) // 64 KiB
		deadline := time.After(10 * time.Second)
		for {
			if _, err := w.Write(chunk); err != nil {
				close(rec.Gone)
				return
			}
			_ = rc.Flush()
			select {
			case <-r.Context().Done():
				close(rec.Gone)
				return
			case <-deadline:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	case "404":
		w.Header().Set("Content-Type", "application/json")
		respond(404, []byte(`{"type":"not_found","title":"Pleo's own 404"}`))
	default:
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Echo-Case", key)
		w.Header().Add("X-Multi", "first")
		w.Header().Add("X-Multi", "second")
		sum := sha256.Sum256(body)
		echo, _ := json.Marshal(map[string]any{"method": r.Method, "uri": r.RequestURI, "len": len(body), "sha256": hex.EncodeToString(sum[:])})
		if r.Method == http.MethodHead {
			w.Header().Set("Content-Length", fmt.Sprint(len(echo)))
			u.mu.Lock()
			rec.Status = 200
			u.mu.Unlock()
			w.WriteHeader(200)
			return
		}
		respond(200, echo)
	}
}

// records returns the requests the upstream received for a case key.
func (u *upstream) records(key string) []*record {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]*record(nil), u.recs[key]...)
}

// any reports whether some request the upstream received satisfies f.
func (u *upstream) any(f func(*record) bool) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, r := range u.all {
		if f(r) {
			return true
		}
	}
	return false
}

// countingListener forwards every connection to addr byte for byte and counts them.
type countingListener struct {
	ln    net.Listener
	mu    sync.Mutex
	conns int
}

func newCountingForwarder(t *testing.T, addr string) *countingListener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &countingListener{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			c.mu.Lock()
			c.conns++
			c.mu.Unlock()
			go func() {
				defer in.Close()
				out, err := net.Dial("tcp", addr)
				if err != nil {
					return
				}
				defer out.Close()
				go func() { _, _ = io.Copy(out, in); _ = out.(*net.TCPConn).CloseWrite() }()
				_, _ = io.Copy(in, out)
			}()
		}
	}()
	return c
}

func (c *countingListener) addr() string { return c.ln.Addr().String() }

func (c *countingListener) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conns
}
