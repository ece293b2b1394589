package clients_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/testenv"
)

// spec is one request, as every client sends it.
type spec struct {
	name   string
	method string
	target string // path and query, exactly as on the wire
	// company selects the credential: "oauth" (X-Pleo-Company-Id of the oauth2 company, the
	// default), "key" (the API-key company's id), "default" (no selection: the default company).
	company string
	body    string // "", "json", "form", "multipart", "large" (above maxReplay)
	chunked bool   // sent with Transfer-Encoding: chunked, in several chunks
	expect  bool   // Expect: 100-continue, the body sent after the 100
	reject  bool   // the upstream answers 401 to the first attempt
	// response is the upstream's kind of answer (see upstream): "", "gzip", "sse", "hangup", "404".
	response string
	accept   string // the Accept-Encoding the client sends ("": its default)
	// badEscape: the target holds an invalid % escape, which URI parsers (Java's) refuse to send.
	badEscape bool
	// rawUTF8: the target holds unescaped UTF-8, which only curl and a raw socket send.
	rawUTF8 bool
}

// want is the status the caller must get through the sidecar.
func (s spec) want() int {
	switch {
	case s.response == "404":
		return 404
	case s.reject && (s.body == "large"):
		return 401 // not replayable: the 401 is passed back
	}
	return 200
}

// retried reports whether the sidecar must send the request twice (401, then the retry).
func (s spec) retried() bool { return s.reject && s.want() == 200 }

// direct reports whether the case also runs straight to the upstream, as the reference for
// what the client sends.
func (s spec) direct() bool { return s.response != "sse" && s.response != "hangup" }

var specs = func() []spec {
	var out []spec
	for _, m := range []string{"GET", "HEAD", "DELETE", "OPTIONS"} {
		out = append(out, spec{name: "method-" + m, method: m, target: "/v1/export-jobs/42?fields=id"})
	}
	for _, m := range []string{"POST", "PUT", "PATCH"} {
		out = append(out, spec{name: "method-" + m, method: m, target: "/v1/vendors/7", body: "json"})
	}
	for _, b := range []string{"json", "form", "multipart"} {
		out = append(out,
			spec{name: "body-" + b, method: "POST", target: "/v1/receipts?draft=true", body: b},
			spec{name: "body-" + b + "-401", method: "POST", target: "/v1/receipts?draft=true", body: b, reject: true})
	}
	out = append(out,
		spec{name: "body-chunked", method: "POST", target: "/v1/receipts", body: "multipart", chunked: true},
		spec{name: "body-chunked-401", method: "POST", target: "/v1/receipts", body: "multipart", chunked: true, reject: true},
		spec{name: "body-chunked-large-401", method: "PUT", target: "/v1/files/big", body: "large", chunked: true, reject: true},
		spec{name: "body-large", method: "PUT", target: "/v1/files/big", body: "large"},
		spec{name: "body-large-401", method: "PUT", target: "/v1/files/big", body: "large", reject: true},
		spec{name: "expect-small", method: "POST", target: "/v1/receipts", body: "multipart", expect: true},
		spec{name: "expect-small-401", method: "POST", target: "/v1/receipts", body: "multipart", expect: true, reject: true},
		spec{name: "expect-large", method: "PUT", target: "/v1/files/big", body: "large", expect: true},
		spec{name: "expect-large-401", method: "PUT", target: "/v1/files/big", body: "large", expect: true, reject: true},

		spec{name: "path-escaped-slash", method: "GET", target: "/v1/files/a%2Fb/c%2f?x=1"},
		spec{name: "path-unicode-escaped", method: "GET", target: "/v1/vendors/caf%C3%A9/%E2%9C%93?name=J%C3%B6rg"},
		spec{name: "semicolons", method: "GET", target: "/v1/items;v=2?filter=name;eq;bob&page=2"},
		spec{name: "plus-repeated", method: "GET", target: "/v1/search?q=a+b&q=c%2Bd&q=e%20f&q=a+b"},
		spec{name: "repeated-empty", method: "GET", target: "/v1/search?b=2&a=1&a=&a&b=1"},
		spec{name: "bad-escape-off", method: "GET", target: "/v1/search?search=50%off&page=2", badEscape: true},
		spec{name: "bad-escape-zz", method: "GET", target: "/v1/search?z=9&bad=%zz&a=1", badEscape: true},
		spec{name: "bad-escape-zz-401", method: "POST", target: "/v1/search?z=9&bad=%zz&a=1", body: "json", reject: true, badEscape: true},
		spec{name: "raw-utf8", method: "GET", target: "/v1/vendors/café?q=✓", rawUTF8: true},

		spec{name: "company-key", method: "POST", target: "/v1/vendors", company: "key", body: "json"},
		spec{name: "company-default", method: "GET", target: "/v1/vendors", company: "default"},
		spec{name: "upstream-404", method: "GET", target: "/v1/nothing", response: "404"},
		spec{name: "gzip", method: "GET", target: "/v1/export-items", response: "gzip", accept: "gzip"},
		spec{name: "sse", method: "GET", target: "/v1/events", response: "sse", accept: "identity"},
		spec{name: "hangup", method: "GET", target: "/v1/download", response: "hangup"},
	)
	return out
}()

// Request bodies: fixed bytes, so that both legs and both attempts can be compared exactly.
var (
	bodyJSON      = []byte(`{"amount":"12.50","note":"café ✓ \"quoted\"","tags":["a","b"]}`)
	bodyForm      = []byte("a=1&b=two+words&c=%C3%A9&c=second&empty=&semi=x;y")
	multipartBnd  = "----clientsuite7MA4YWxkTrZu0gW"
	bodyMultipart = func() []byte {
		var b bytes.Buffer
		fmt.Fprintf(&b, "--%s\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nline one\r\nline two\r\n", multipartBnd)
		fmt.Fprintf(&b, "--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"r.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n", multipartBnd)
		for i := 0; i < 8; i++ {
			for c := 0; c < 256; c++ {
				b.WriteByte(byte(c))
			}
		}
		fmt.Fprintf(&b, "\r\n--%s--\r\n", multipartBnd)
		return b.Bytes()
	}()
	bodyLarge = func() []byte {
		r := rand.New(rand.NewPCG(1, 2))
		b := make([]byte, 4*maxReplay+13)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	}()
)

func (s spec) bodyBytes() ([]byte, string) {
	switch s.body {
	case "json":
		return bodyJSON, "application/json"
	case "form":
		return bodyForm, "application/x-www-form-urlencoded"
	case "multipart":
		return bodyMultipart, "multipart/form-data; boundary=" + multipartBnd
	case "large":
		return bodyLarge, "application/octet-stream"
	}
	return nil, ""
}

// clientCase is what a client script runs: one request. The JSON names are the scripts'.
type clientCase struct {
	ID          string      `json:"id"`
	Method      string      `json:"method"`
	URL         string      `json:"url"`
	Headers     [][2]string `json:"headers"`
	BodyFile    string      `json:"body_file,omitempty"`
	Chunks      []int       `json:"chunks,omitempty"`
	Expect      bool        `json:"expect,omitempty"`
	Read        string      `json:"read,omitempty"`
	HangupAfter int         `json:"hangup_after,omitempty"`
	Version     string      `json:"-"` // Java: "1.1" or "2"
}

// clientResult is what a client script prints for a case.
type clientResult struct {
	ID      string      `json:"id"`
	Status  int         `json:"status"`
	Headers [][2]string `json:"headers"`
	Body    []byte      `json:"body_b64"`
	// Continues counts the 100 Continue responses the client saw, where it can tell.
	Continues *int `json:"continues"`
	Events    []struct {
		T    float64 `json:"t"` // Unix milliseconds when the event was read
		Data string  `json:"data"`
	} `json:"events"`
	Decoded bool   `json:"decoded"` // the client decodes Content-Encoding itself
	Error   string `json:"error"`
	Version string `json:"version"`
	// Ms is how long the case took, in milliseconds, as the client measured it.
	Ms float64 `json:"ms"`
}

func (r clientResult) header(name string) []string {
	var out []string
	for _, h := range r.Headers {
		if strings.EqualFold(h[0], name) {
			out = append(out, h[1])
		}
	}
	return out
}

// client is one real HTTP client and what it can send.
type client struct {
	name string
	// verbatim: the client puts the request target on the wire exactly as given.
	verbatim bool
	// continues: the client reports how many 100 Continue responses it saw.
	continues bool
	supports  func(spec) bool
	run       func(t *testing.T, cases []clientCase) map[string]clientResult
}

func all(spec) bool { return true }

var clients = []client{
	{name: "curl", verbatim: true, continues: true, supports: all, run: runCurl},
	{name: "python-http.client", verbatim: true, continues: true,
		supports: func(s spec) bool { return !s.rawUTF8 },
		run:      func(t *testing.T, cs []clientCase) map[string]clientResult { return runPython(t, "http.client", cs) }},
	{name: "python-requests",
		// requests sends Expect without waiting for the 100: the body follows at once, as
		// many clients do.
		supports: func(s spec) bool { return !s.rawUTF8 },
		run:      func(t *testing.T, cs []clientCase) map[string]clientResult { return runPython(t, "requests", cs) }},
	{name: "node-fetch",
		// fetch has no Expect: undici refuses the header.
		supports: func(s spec) bool { return !s.rawUTF8 && !s.expect },
		run:      func(t *testing.T, cs []clientCase) map[string]clientResult { return runNode(t, "fetch", cs) }},
	{name: "node-http", verbatim: true, continues: true,
		supports: func(s spec) bool { return !s.rawUTF8 },
		run:      func(t *testing.T, cs []clientCase) map[string]clientResult { return runNode(t, "http", cs) }},
	{name: "java-http1.1",
		supports: func(s spec) bool { return !s.rawUTF8 && !s.badEscape },
		run:      func(t *testing.T, cs []clientCase) map[string]clientResult { return runJava(t, "1.1", cs) }},
	// HTTP_2 is HttpClient's default version: over http:// it asks for "Upgrade: h2c" on every
	// new connection, and carries on in HTTP/1.1 when the server does not switch.
	{name: "java-http2",
		supports: func(s spec) bool { return !s.rawUTF8 && !s.badEscape },
		run:      func(t *testing.T, cs []clientCase) map[string]clientResult { return runJava(t, "2", cs) }},
}

// TestRealClients runs every spec a client supports through the sidecar and straight to the
// upstream, and compares what the upstream received.
func TestRealClients(t *testing.T) {
	sc := startSidecar(t)
	bodies := t.TempDir()
	hangups := 0 // clients that hung up mid-download
	for _, cl := range clients {
		t.Run(cl.name, func(t *testing.T) {
			var cases []clientCase
			var run []spec
			for _, s := range specs {
				if !cl.supports(s) {
					continue
				}
				run = append(run, s)
				if s.direct() {
					cases = append(cases, s.clientCase(cl.name, "direct", sc.up.srv.URL, bodies))
				}
				cases = append(cases, s.clientCase(cl.name, "proxy", "http://"+sc.addr, bodies))
			}
			results := cl.run(t, cases)
			if results["hangup/proxy"].Status == 200 {
				hangups++
			}
			for _, s := range run {
				t.Run(s.name, func(t *testing.T) { checkCase(t, sc, cl, s, results) })
			}
			sc.healthy(t)
		})
	}
	// Every client's hang-up is counted as 499, not as the 200 already sent.
	if n := sc.requestsWithCode(t, "499"); n < float64(hangups) {
		t.Errorf("pleo_proxy_requests_total counts %v requests with code 499, want at least %d (one hang-up per client)", n, hangups)
	}
}

// caseKey is the X-Case header of a client's spec on one leg ("direct" or "proxy").
func caseKey(clientName, specName, leg string) string { return clientName + "/" + specName + "/" + leg }

// clientCase builds the case for one leg; base is the URL the request goes to.
func (s spec) clientCase(clientName, leg, base, dir string) clientCase {
	c := clientCase{ID: s.name + "/" + leg, Method: s.method, URL: base + s.target, Version: "1.1"}
	key := caseKey(clientName, s.name, leg)
	c.Headers = append(c.Headers, [2]string{"X-Case", key}, [2]string{"Authorization", clientAuthorization},
		[2]string{"X-Request-Id", requestID(key)})
	switch s.company {
	case "", "oauth":
		c.Headers = append(c.Headers, [2]string{"X-Pleo-Company-Id", oauthCompany})
	case "key":
		c.Headers = append(c.Headers, [2]string{"X-Pleo-Company-Id", keyCompany})
	}
	if body, ct := s.bodyBytes(); body != nil {
		c.BodyFile = filepath.Join(dir, s.body)
		if _, err := os.Stat(c.BodyFile); err != nil {
			if err := os.WriteFile(c.BodyFile, body, 0o600); err != nil {
				panic(err)
			}
		}
		c.Headers = append(c.Headers, [2]string{"Content-Type", ct})
		if s.chunked {
			c.Chunks = []int{100, 1000, 4096}
		}
	}
	if s.accept != "" {
		c.Headers = append(c.Headers, [2]string{"Accept-Encoding", s.accept})
	}
	c.Expect = s.expect
	if leg == "proxy" {
		if s.reject {
			c.Headers = append(c.Headers, [2]string{"X-Test-Reject-First", "yes"})
		}
		if s.response != "" {
			c.Headers = append(c.Headers, [2]string{"X-Test-Response", s.response})
		}
	}
	switch s.response {
	case "sse":
		c.Read = "sse"
	case "hangup":
		c.Read, c.HangupAfter = "hangup", 1
	}
	return c
}

// requestID is the X-Request-Id a case sends, so that its access log line can be found.
func requestID(key string) string {
	return "clients-" + strings.NewReplacer("/", "-", ".", "-").Replace(key)
}

// notCompared are the headers the sidecar may change (the contract's header changes and the
// hop-by-hop ones) and the suite's own control headers.
var notCompared = []string{"Authorization", "Proxy-Authorization", "X-Pleo-Company-Id", "X-Tenant-Id", "X-Request-Id",
	"X-Case", "X-Test-Reject-First", "X-Test-Response", "Connection", "Keep-Alive", "Proxy-Connection", "Te",
	"Transfer-Encoding", "Upgrade", "Http2-Settings", "Expect", "Content-Length"}

func compared(h http.Header) http.Header {
	out := h.Clone()
	for _, k := range notCompared {
		delete(out, k)
	}
	return out
}

// sameRequest reports how got differs from want (method, raw target, body, headers but the
// ones the sidecar may change), or "".
func sameRequest(got, want *record) string {
	var diffs []string
	if got.Method != want.Method {
		diffs = append(diffs, fmt.Sprintf("method %q, want %q", got.Method, want.Method))
	}
	if got.URI != want.URI {
		diffs = append(diffs, fmt.Sprintf("request target %q, want %q", got.URI, want.URI))
	}
	if !bytes.Equal(got.Body, want.Body) {
		diffs = append(diffs, fmt.Sprintf("body of %d bytes differs from the %d bytes wanted", len(got.Body), len(want.Body)))
	}
	if len(want.TransferEncoding) == 0 && want.ContentLength >= 0 && got.ContentLength != want.ContentLength {
		diffs = append(diffs, fmt.Sprintf("Content-Length %d, want %d", got.ContentLength, want.ContentLength))
	}
	g, w := compared(got.Header), compared(want.Header)
	keys := slices.Sorted(func(yield func(string) bool) {
		seen := map[string]bool{}
		for k := range g {
			seen[k] = true
		}
		for k := range w {
			seen[k] = true
		}
		for k := range seen {
			if !yield(k) {
				return
			}
		}
	})
	for _, k := range keys {
		if !slices.Equal(g[k], w[k]) {
			diffs = append(diffs, fmt.Sprintf("header %s: %q, want %q", k, g[k], w[k]))
		}
	}
	return strings.Join(diffs, "; ")
}

func checkCase(t *testing.T, sc *sidecar, cl client, s spec, results map[string]clientResult) {
	res, ok := results[s.name+"/proxy"]
	if !ok {
		t.Fatal("the client printed no result for the case")
	}
	var direct *record
	if s.direct() {
		d, ok := results[s.name+"/direct"]
		drecs := sc.up.records(caseKey(cl.name, s.name, "direct"))
		if !ok || d.Error != "" || d.Status != 200 || len(drecs) != 1 {
			t.Fatalf("the client itself cannot send this straight to the upstream: %+v, %d requests", d, len(drecs))
		}
		direct = drecs[0]
	}
	if res.Error != "" {
		t.Errorf("the client failed through the sidecar: %s", res.Error)
	}
	if res.Ms > 2000 {
		t.Logf("slow: %.0f ms through the sidecar", res.Ms)
	}
	if res.Status != s.want() {
		t.Errorf("status %d, want %d (body %q)", res.Status, s.want(), trim(res.Body))
	}
	key := caseKey(cl.name, s.name, "proxy")
	recs := sc.up.records(key)
	wantN := 1
	if s.retried() {
		wantN = 2
	}
	if len(recs) != wantN {
		t.Fatalf("the upstream received %d requests, want %d", len(recs), wantN)
	}
	body, _ := s.bodyBytes()
	for i, rec := range recs {
		if direct != nil {
			if d := sameRequest(rec, direct); d != "" {
				t.Errorf("attempt %d differs from the client's own request: %s", i+1, d)
			}
		}
		if cl.verbatim && !s.rawUTF8 && rec.URI != s.target { // curl escapes raw UTF-8 in the path itself
			t.Errorf("attempt %d: request target %q, the client sent %q", i+1, rec.URI, s.target)
		}
		if !bytes.Equal(rec.Body, body) {
			t.Errorf("attempt %d: body of %d bytes differs from the %d bytes sent", i+1, len(rec.Body), len(body))
		}
		for _, h := range []string{"Upgrade", "Http2-Settings", "Proxy-Authorization", "X-Pleo-Company-Id", "Keep-Alive"} {
			if v, ok := rec.Header[h]; ok {
				t.Errorf("attempt %d: %s %q forwarded", i+1, h, v)
			}
		}
		if c := rec.Header.Get("Connection"); c != "" {
			t.Errorf("attempt %d: Connection %q forwarded", i+1, c)
		}
		if s.body != "" && s.body != "large" && rec.Header.Get("Expect") != "" {
			t.Errorf("attempt %d: Expect forwarded with a body the sidecar buffered", i+1)
		}
		auth := rec.Header.Values("Authorization")
		switch s.company {
		case "key", "default":
			if !slices.Equal(auth, []string{credentials.BasicAuthorization(apiKey)}) {
				t.Errorf("attempt %d: Authorization %q, want the API key's Basic", i+1, auth)
			}
		default:
			if len(auth) != 1 || !strings.HasPrefix(auth[0], "Bearer ") || auth[0] == clientAuthorization || len(auth[0]) < 20 {
				t.Errorf("attempt %d: Authorization %q, want the sidecar's Bearer token", i+1, auth)
			}
		}
	}
	if len(recs) == 2 {
		if d := sameRequest(recs[1], recs[0]); d != "" {
			t.Errorf("the retry differs from the first attempt: %s", d)
		}
		if recs[1].Header.Get("Authorization") == recs[0].Header.Get("Authorization") {
			t.Error("the retry sent the rejected token again")
		}
	}
	last := recs[len(recs)-1]
	if s.expect && cl.continues && (res.Continues == nil || *res.Continues != 1) {
		n := -1
		if res.Continues != nil {
			n = *res.Continues
		}
		t.Errorf("the client saw %d 100 Continue responses, want exactly 1", n)
	}
	switch {
	case s.response == "gzip":
		want := gzipBytes
		if res.Decoded {
			want = []byte(gzipPlain)
		}
		if !bytes.Equal(res.Body, want) {
			t.Errorf("gzip answer: body %q, want %q", trim(res.Body), trim(want))
		}
		if ce := res.header("Content-Encoding"); !slices.Equal(ce, []string{"gzip"}) {
			t.Errorf("Content-Encoding %q, want gzip passed through", ce)
		}
	case s.response == "sse":
		var data []string
		for _, e := range res.Events {
			data = append(data, e.Data)
		}
		if !slices.Equal(data, []string{"one", "two"}) {
			t.Fatalf("SSE events %q, want one, two", data)
		}
		sent2 := float64(last.Event2At.UnixNano()) / 1e6
		if res.Events[0].T >= sent2 {
			t.Errorf("the first event reached the client %.0f ms after the upstream began the second: not streamed", res.Events[0].T-sent2)
		}
	case s.response == "hangup":
		if len(res.Body) == 0 {
			t.Error("the client read nothing before hanging up")
		}
		select {
		case <-last.Gone:
		case <-time.After(10 * time.Second):
			t.Error("the upstream's download went on 10 s after the client hung up")
		}
		checkAborted(t, sc, requestID(key))
	case s.method == "HEAD":
		if len(res.Body) != 0 {
			t.Errorf("HEAD answered with a body %q", trim(res.Body))
		}
	default:
		if !bytes.Equal(res.Body, last.RespBody) {
			t.Errorf("body %q, the upstream sent %q", trim(res.Body), trim(last.RespBody))
		}
	}
	if s.want() == 200 && s.response == "" {
		if v := res.header("X-Echo-Case"); !slices.Equal(v, []string{key}) {
			t.Errorf("X-Echo-Case %q, want %q", v, key)
		}
	}
}

func trim(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "…"
	}
	return string(b)
}

// need returns the path of a client's command, or ends the test through testenv.Unavailable
// (a failure under CI=true) naming the Debian package that provides it.
func need(t *testing.T, command, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(command)
	if err != nil {
		testenv.Unavailable(t, "%s is not installed (Debian package %s)", command, pkg)
	}
	return p
}

// runLines runs a client process and decodes one clientResult per line of its output.
func runLines(t *testing.T, cmd *exec.Cmd) map[string]clientResult {
	t.Helper()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Logf("%s: %v\n%s", cmd.Args[0], err, stderr.String())
	}
	results := map[string]clientResult{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var r clientResult
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("%s printed %q: %v", cmd.Args[0], trim(sc.Bytes()), err)
		}
		results[r.ID] = r
	}
	return results
}

func writeCases(t *testing.T, cases []clientCase) string {
	t.Helper()
	b, err := json.Marshal(cases)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "cases.json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func clientContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func runPython(t *testing.T, mode string, cases []clientCase) map[string]clientResult {
	py := need(t, "python3", "python3")
	if mode == "requests" {
		if err := exec.Command(py, "-c", "import requests").Run(); err != nil {
			t.Skip("Python's requests is not installed (Debian package python3-requests): the issue asks for it only where present")
		}
	}
	return runLines(t, exec.CommandContext(clientContext(t), py, "testdata/client.py", mode, writeCases(t, cases)))
}

func runNode(t *testing.T, mode string, cases []clientCase) map[string]clientResult {
	node := need(t, "node", "nodejs")
	return runLines(t, exec.CommandContext(clientContext(t), node, "--no-warnings", "testdata/client.mjs", mode, writeCases(t, cases)))
}

// javaClasses compiles testdata/Client.java once per test process.
var javaClasses = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "pleo-auth-proxy-java")
	if err != nil {
		return "", err
	}
	if out, err := exec.Command("javac", "-d", dir, "testdata/Client.java").CombinedOutput(); err != nil {
		return "", fmt.Errorf("javac: %v\n%s", err, out)
	}
	return dir, nil
})

func runJava(t *testing.T, version string, cases []clientCase) map[string]clientResult {
	need(t, "javac", "openjdk-17-jdk-headless")
	java := need(t, "java", "openjdk-17-jdk-headless")
	classes, err := javaClasses()
	if err != nil {
		t.Fatal(err)
	}
	var tsv strings.Builder
	for _, c := range cases {
		var hdr strings.Builder
		for _, h := range c.Headers {
			fmt.Fprintf(&hdr, "%s: %s\n", h[0], h[1])
		}
		body, chunks := "-", "-"
		if c.BodyFile != "" {
			body = c.BodyFile
		}
		if len(c.Chunks) > 0 {
			var s []string
			for _, n := range c.Chunks {
				s = append(s, fmt.Sprint(n))
			}
			chunks = strings.Join(s, ",")
		}
		expect, read := "0", c.Read
		if c.Expect {
			expect = "1"
		}
		if read == "" {
			read = "full"
		}
		fmt.Fprintf(&tsv, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", c.ID, c.Method, c.URL, version, expect, body, chunks, read,
			c.HangupAfter, base64.StdEncoding.EncodeToString([]byte(hdr.String())))
	}
	p := filepath.Join(t.TempDir(), "cases.tsv")
	if err := os.WriteFile(p, []byte(tsv.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return runLines(t, exec.CommandContext(clientContext(t), java, "-cp", classes, "Client", p))
}

// runCurl runs one curl process per case, as shell scripts do.
func runCurl(t *testing.T, cases []clientCase) map[string]clientResult {
	curl := need(t, "curl", "curl")
	results := map[string]clientResult{}
	for _, c := range cases {
		results[c.ID] = curlCase(t, curl, c)
	}
	return results
}

func curlCase(t *testing.T, curl string, c clientCase) clientResult {
	dir := t.TempDir()
	head, bodyOut := filepath.Join(dir, "head"), filepath.Join(dir, "body")
	args := []string{"-sS", "--path-as-is", "-g", "--max-time", "20", "-D", head}
	if c.Method == "HEAD" {
		args = append(args, "-I")
	} else {
		args = append(args, "-X", c.Method)
	}
	for _, h := range c.Headers {
		args = append(args, "-H", h[0]+": "+h[1])
	}
	if c.Expect {
		args = append(args, "-H", "Expect: 100-continue", "--expect100-timeout", "10")
	} else {
		args = append(args, "-H", "Expect:") // curl adds it on its own for uploads
	}
	var stdin io.Reader
	if c.BodyFile != "" {
		if len(c.Chunks) > 0 {
			// -T - reads standard input and sends it chunked as it comes.
			args = append(args, "-T", "-")
			b, err := os.ReadFile(c.BodyFile)
			if err != nil {
				t.Fatal(err)
			}
			stdin = bytes.NewReader(b)
		} else {
			args = append(args, "--data-binary", "@"+c.BodyFile)
		}
	}
	streaming := c.Read == "sse" || c.Read == "hangup"
	if streaming {
		args = append(args, "-N")
	} else {
		args = append(args, "-o", bodyOut)
	}
	args = append(args, c.URL)
	cmd := exec.CommandContext(clientContext(t), curl, args...)
	cmd.Stdin = stdin
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	res := clientResult{ID: c.ID}
	if streaming {
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(out)
		if c.Read == "hangup" {
			b := make([]byte, c.HangupAfter)
			n, _ := io.ReadFull(br, b)
			res.Body = b[:n]
			_ = cmd.Process.Kill() // the connection goes with the process
			_ = cmd.Wait()
		} else {
			var data []string
			for {
				line, err := br.ReadString('\n')
				line = strings.TrimRight(line, "\r\n")
				if strings.HasPrefix(line, "data:") {
					data = append(data, strings.TrimSpace(line[5:]))
				} else if line == "" && len(data) > 0 {
					res.Events = append(res.Events, struct {
						T    float64 `json:"t"`
						Data string  `json:"data"`
					}{float64(time.Now().UnixNano()) / 1e6, strings.Join(data, "\n")})
					data = nil
				}
				if err != nil {
					break
				}
			}
			if err := cmd.Wait(); err != nil {
				res.Error = fmt.Sprintf("%v: %s", err, stderr.String())
			}
		}
	} else if err := cmd.Run(); err != nil {
		res.Error = fmt.Sprintf("%v: %s", err, stderr.String())
	}
	hb, _ := os.ReadFile(head)
	zero := 0
	res.Continues = &zero
	for _, block := range strings.Split(string(hb), "\r\n\r\n") {
		lines := strings.Split(block, "\r\n")
		var code int
		if _, err := fmt.Sscanf(lines[0], "HTTP/%s %d", new(string), &code); err != nil {
			continue
		}
		if code == 100 {
			*res.Continues++
			continue
		}
		res.Status, res.Headers = code, nil
		for _, l := range lines[1:] {
			if k, v, ok := strings.Cut(l, ":"); ok {
				res.Headers = append(res.Headers, [2]string{strings.ToLower(k), strings.TrimSpace(v)})
			}
		}
	}
	if !streaming && c.Method != "HEAD" {
		res.Body, _ = os.ReadFile(bodyOut)
	}
	return res
}

// checkAborted asserts that the access log says the caller of request id went away
// mid-response: status 499, or an "aborted" field, not the 200 already sent.
func checkAborted(t *testing.T, sc *sidecar, id string) {
	t.Helper()
	var lines []map[string]any
	deadline := time.Now().Add(5 * time.Second)
	for len(lines) == 0 && time.Now().Before(deadline) {
		lines = sc.accessLog(id)
		if len(lines) == 0 {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if len(lines) != 1 {
		t.Fatalf("%d access log lines for request %s, want 1", len(lines), id)
	}
	if l := lines[0]; l["status"] != float64(499) && l["aborted"] != true {
		t.Errorf("a caller gone mid-download is logged with status %v, aborted %v: want 499 or aborted", l["status"], l["aborted"])
	}
}
