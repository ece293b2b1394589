package proxy

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/metrics"
)

// Options configures a Handler.
type Options struct {
	// Upstream is the only destination; its path is a prefix for every request's path.
	Upstream *url.URL
	// Authorizer hands out credentials (a *credentials.Broker).
	Authorizer Authorizer
	// Tenants resolves the tenant header (a *credentials.Broker).
	Tenants TenantResolver
	// CompanyHeader and TenantHeader name the selection headers (defaults X-Pleo-Company-Id,
	// X-Tenant-Id). DefaultCompanyID is used when a request names no company.
	CompanyHeader, TenantHeader, DefaultCompanyID string
	// ClientTokens, when not empty, are required of every caller as
	// "Proxy-Authorization: Bearer <token>" (for a listener beyond loopback).
	ClientTokens []credentials.Secret
	// MaxReplayBytes is the largest body buffered for the 401 retry.
	MaxReplayBytes int64
	// Transport reaches the upstream (default NewUpstreamTransport(30s, DefaultMaxConns)).
	Transport http.RoundTripper
	// Logger receives one access line per request (default discard).
	Logger *slog.Logger
	// Metrics records request metrics (nil: none).
	Metrics *metrics.Metrics
	// Now is the clock for durations (default time.Now).
	Now func() time.Time
	// ReconnectURL, when set, gives a reauthorization_required problem its reconnect_url: a
	// signed connect link for the company's tenant, or "" for none.
	ReconnectURL func(companyID string) string
}

// Handler is the data listener's http.Handler.
type Handler struct {
	rp           *httputil.ReverseProxy
	auth         Authorizer
	maxReplay    int64
	selector     Selector
	clientTokens atomic.Pointer[[][32]byte] // SHA-256 of each client token; empty: none required
	log          *slog.Logger
	metrics      *metrics.Metrics
	now          func() time.Time
	reconnect    func(companyID string) string
}

// New builds the handler.
func New(opts Options) (*Handler, error) {
	if opts.Upstream == nil || opts.Upstream.Host == "" || (opts.Upstream.Scheme != "http" && opts.Upstream.Scheme != "https") {
		return nil, errors.New("proxy: the upstream must be an absolute http(s) URL")
	}
	if opts.Authorizer == nil || opts.Tenants == nil {
		return nil, errors.New("proxy: an Authorizer and a TenantResolver are required")
	}
	if opts.CompanyHeader == "" {
		opts.CompanyHeader = "X-Pleo-Company-Id"
	}
	if opts.TenantHeader == "" {
		opts.TenantHeader = "X-Tenant-Id"
	}
	if opts.MaxReplayBytes < 0 {
		opts.MaxReplayBytes = 0
	}
	if opts.Transport == nil {
		opts.Transport = NewUpstreamTransport(30*time.Second, DefaultMaxConns)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	h := &Handler{
		selector: Selector{
			CompanyHeader: http.CanonicalHeaderKey(opts.CompanyHeader),
			TenantHeader:  http.CanonicalHeaderKey(opts.TenantHeader),
			Default:       credentials.CanonicalCompanyID(opts.DefaultCompanyID),
			Tenants:       opts.Tenants,
		},
		auth:      opts.Authorizer,
		maxReplay: opts.MaxReplayBytes,
		log:       opts.Logger,
		metrics:   opts.Metrics,
		now:       opts.Now,
		reconnect: opts.ReconnectURL,
	}
	h.SetClientTokens(opts.ClientTokens)
	upstream := *opts.Upstream
	companyHeader, tenantHeader := h.selector.CompanyHeader, h.selector.TenantHeader
	h.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(&upstream) // the destination never comes from the request
			setRawTarget(pr.Out, pr.In, &upstream)
			st := stateFrom(pr.In.Context())
			out := pr.Out.Header
			// Expect is hop by hop here: a body buffered for the retry was already read,
			// answered with the one 100 Continue the caller sees, so the upstream is not
			// asked for another. A streamed HTTP/1 body keeps it (see continueGate).
			if !st.streamExpect {
				out.Del("Expect")
			}
			out.Del("Proxy-Authorization")
			out.Del(companyHeader)
			out.Del(tenantHeader)
			// Request trailers come after the body, past every check above: a client could
			// send Authorization, its client token or another company's selection header
			// there. The upstream API uses none, so none is forwarded.
			pr.Out.Trailer = nil
			// Replaces whatever the client sent; the slice is built once per credential.
			out["Authorization"] = st.grant.HeaderValues()
			if v := out["X-Request-Id"]; len(v) != 1 || v[0] != st.requestID {
				out["X-Request-Id"] = st.idHeader
			}
		},
		Transport: &authTransport{
			base:    opts.Transport,
			auth:    opts.Authorizer,
			metrics: opts.Metrics,
		},
		BufferPool:   bufferPool{},
		ErrorHandler: h.proxyError,
		ErrorLog:     slog.NewLogLogger(opts.Logger.Handler(), slog.LevelWarn),
	}
	return h, nil
}

// statusClientClosed is logged and counted for a caller that went away before its answer
// (nginx's 499); nothing is written.
const statusClientClosed = 499

// requestState travels in the request's context from ServeHTTP to the transport and back.
type requestState struct {
	companyID      string
	requestID      string
	credentialType string
	idHeader       []string // X-Request-Id as a header value
	grant          credentials.Grant
	body           *replayBody
	streamExpect   bool // Expect goes upstream with a streamed HTTP/1 body
	attempts       int
	errCode        Code
}

// exchange is everything one request needs beyond what ReverseProxy allocates, in a single
// allocation: state, response recorder, the context that carries the state, and the request
// id's bytes and header value.
type exchange struct {
	rw    recorder
	st    requestState
	ctx   stateContext
	id    [32]byte
	idHdr [1]string
}

// stateContext carries the request state without a context.WithValue allocation.
type stateContext struct {
	context.Context
	st *requestState
}

// Value implements context.Context.
func (c *stateContext) Value(key any) any {
	if key == (stateKey{}) {
		return c.st
	}
	return c.Context.Value(key)
}

type stateKey struct{}

func stateFrom(ctx context.Context) *requestState {
	if c, ok := ctx.(*stateContext); ok {
		return c.st
	}
	if st, ok := ctx.Value(stateKey{}).(*requestState); ok {
		return st
	}
	return &requestState{}
}

// ServeHTTP proxies one request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := h.now()
	done := h.metrics.InFlight()
	defer done()
	x := &exchange{rw: recorder{ResponseWriter: w, limit: limitOf(r.Context())}}
	x.st.requestID = x.requestID(r)
	rw, st := &x.rw, &x.st
	defer func() {
		// ReverseProxy aborts with http.ErrAbortHandler when copying the response fails,
		// the caller's side or the upstream's; the exchange is logged, then the panic goes on
		// to net/http, which closes the connection.
		v := recover()
		h.finish(rw, r, st, start, v == http.ErrAbortHandler)
		if v != nil {
			panic(v)
		}
	}()

	if r.Method == http.MethodConnect || r.Method == http.MethodTrace || r.Method == "PRI" {
		h.writeProblem(rw, st, &Problem{Code: CodeMethodNotAllowed, Detail: r.Method + " is not forwarded"})
		return
	}
	if up := r.Header["Upgrade"]; len(up) > 0 {
		if !onlyH2C(up) {
			h.writeProblem(rw, st, &Problem{Code: CodeUpgradeNotSupported, Detail: "protocol upgrades (Upgrade: websocket and the like) are not forwarded"})
			return
		}
		// An offer to upgrade to HTTP/2 (Java's HttpClient makes it by default on http://)
		// is declined as RFC 9113 allows: the request is served over HTTP/1.1, and the offer
		// never goes upstream.
		r.Header.Del("Upgrade")
		r.Header.Del("Http2-Settings")
	}
	if n := requestHeadSize(r); n > MaxRequestHeadBytes {
		h.writeProblem(rw, st, &Problem{Code: CodeRequestHeaderTooLarge, Detail: "the request line and header fields exceed " + strconv.Itoa(MaxRequestHeadBytes>>10) + " KiB"})
		return
	}
	if tokens := *h.clientTokens.Load(); len(tokens) > 0 && !clientAuthenticated(r, tokens) {
		h.writeProblem(rw, st, &Problem{Code: CodeClientUnauthenticated, Detail: "send Proxy-Authorization: Bearer <client token>"})
		return
	}
	company, err := h.selector.Select(r.Context(), r)
	if err != nil {
		h.writeProblem(rw, st, problemFor(err, ""))
		return
	}
	st.companyID = company
	grant, err := h.auth.Authorize(r.Context(), company)
	if err != nil {
		if t, ok := credentials.ErrorType(err); ok {
			st.credentialType = string(t) // a credential was chosen, though it cannot be used
		}
		if r.Context().Err() != nil {
			rw.status = statusClientClosed // gave up waiting (for a refresh): nobody to answer
			return
		}
		h.writeProblem(rw, st, problemFor(err, company))
		return
	}
	st.grant, st.credentialType = grant, string(grant.Type)
	x.ctx = stateContext{Context: r.Context(), st: st}
	out := r.WithContext(&x.ctx)
	if st.body, err = bufferBody(out, h.maxReplay); err != nil {
		h.writeProblem(rw, st, problemFor(err, company))
		return
	}
	if !st.body.replayable() && r.ProtoMajor == 1 && out.Body != nil {
		// A streamed body is read only as the upstream takes it. Expect: 100-continue goes
		// upstream with it, and the caller sees one 100 Continue: the upstream's, or the
		// server's own once the body is read first (the gate drops whichever comes second).
		st.streamExpect = true
		out.Body = &continueBody{ReadCloser: out.Body, gate: &rw.gate}
	} else {
		rw.gate.bodyRead = true // read already (or none): any upstream 100 is one too many
	}
	h.rp.ServeHTTP(rw, out)
}

func (h *Handler) finish(rw *recorder, r *http.Request, st *requestState, start time.Time, aborted bool) {
	d := h.now().Sub(start)
	status := rw.status
	if status == 0 {
		status = http.StatusOK
	}
	if rw.writeFailed || aborted && r.Context().Err() != nil {
		// The caller went away before its answer was complete: whatever status was sent,
		// the exchange did not finish (nginx's 499).
		status = statusClientClosed
	}
	ct := st.credentialType
	if ct == "" {
		ct = metrics.CredentialNone
	}
	h.metrics.ObserveRequest(r.Method, status, ct, d)
	if !h.log.Enabled(r.Context(), slog.LevelInfo) {
		return
	}
	attrs := []slog.Attr{
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.Int("status", status),
		// Named by its unit, the same in text and JSON (slog.Duration is bare nanoseconds
		// in JSON).
		slog.Float64("duration_ms", float64(d)/float64(time.Millisecond)),
		slog.String("company_id", st.companyID),
		slog.String("credential_type", ct),
		slog.Int("attempts", st.attempts),
		slog.String("request_id", st.requestID),
	}
	if st.errCode != "" {
		attrs = append(attrs, slog.String("error_code", string(st.errCode)))
	}
	h.log.LogAttrs(r.Context(), slog.LevelInfo, "request", attrs...)
}

// proxyError is the ReverseProxy's ErrorHandler: every transport error becomes a problem.
func (h *Handler) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	st := stateFrom(r.Context())
	if r.Context().Err() != nil && errors.Is(err, context.Canceled) {
		// The caller went away: not an upstream failure, and nobody to answer.
		if rw, ok := w.(*recorder); ok {
			rw.status = statusClientClosed
		}
		return
	}
	p := problemFor(err, st.companyID)
	if p.Code == CodeUpstreamUnreachable || p.Code == CodeUpstreamTimeout || p.Code == CodeStoreUnavailable || p.Code == CodeTokenEndpointError {
		h.log.WarnContext(r.Context(), "request failed", "code", string(p.Code), "company_id", st.companyID, "request_id", st.requestID, "error", err)
	}
	h.writeProblem(w, st, p)
}

func (h *Handler) writeProblem(w http.ResponseWriter, st *requestState, p *Problem) {
	st.errCode = p.Code
	h.metrics.Error(string(p.Code))
	if p.Code == CodeReauthorizationRequired && h.reconnect != nil && p.CompanyID != "" {
		withURL := *p
		withURL.ReconnectURL = h.reconnect(p.CompanyID)
		p = &withURL
	}
	WriteProblem(w, p, st.requestID)
}

// problemFor maps an error to its problem through the error kinds callers branch on. Details
// of unknown errors go to the log, not to the caller.
func problemFor(err error, companyID string) *Problem {
	var p *Problem
	if errors.As(err, &p) {
		return p
	}
	var be *bodyError
	var ne net.Error
	switch {
	case errors.Is(err, credentials.ErrNotFound):
		return &Problem{Code: CodeCompanyUnknown, Detail: "no credential is stored for this company", CompanyID: companyID}
	case errors.Is(err, credentials.ErrCredentialExpired):
		return &Problem{Code: CodeCredentialExpired, Detail: "the company's API key is past its expires_at; a person must issue a new one", CompanyID: companyID}
	case errors.Is(err, credentials.ErrReauthorizationRequired):
		return &Problem{Code: CodeReauthorizationRequired, Detail: "Pleo rejected the refresh token; a person must reconnect the company", CompanyID: companyID}
	case errors.Is(err, credentials.ErrTokenEndpoint):
		return &Problem{Code: CodeTokenEndpointError, Detail: "the token could not be refreshed and no unexpired token is left", CompanyID: companyID, RetryAfter: retryAfter(err)}
	case errors.Is(err, credentials.ErrStoreUnavailable):
		return &Problem{Code: CodeStoreUnavailable, Detail: "the credential store could not be read", CompanyID: companyID, RetryAfter: retryAfter(err)}
	case errors.As(err, &be):
		return &Problem{Code: CodeUpstreamUnreachable, Detail: "the request body could not be read", CompanyID: companyID}
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return &Problem{Code: CodeUpstreamTimeout, Detail: "the upstream did not answer in time", CompanyID: companyID}
	default:
		return &Problem{Code: CodeUpstreamUnreachable, Detail: "the upstream could not be reached", CompanyID: companyID}
	}
}

// retryAfter is the Retry-After of a transient credential failure: the broker's back-off when
// it knows one, else a second.
func retryAfter(err error) time.Duration {
	if d, ok := credentials.RetryAfter(err); ok {
		return d
	}
	return time.Second
}

// SetClientTokens replaces the client tokens callers must present (a reloaded
// PLEO_PROXY_CLIENT_TOKENS_FILE): requests after it returns are checked against the new ones.
// None: no token is required.
func (h *Handler) SetClientTokens(tokens []credentials.Secret) {
	hashes := make([][32]byte, 0, len(tokens))
	for _, t := range tokens {
		hashes = append(hashes, sha256.Sum256([]byte(t.Reveal())))
	}
	h.clientTokens.Store(&hashes)
}

// clientAuthenticated checks Proxy-Authorization against every configured client token in
// constant time (hashes, so lengths do not leak either).
func clientAuthenticated(r *http.Request, tokens [][32]byte) bool {
	v := r.Header.Get("Proxy-Authorization")
	const prefix = "Bearer "
	if len(v) <= len(prefix) || !strings.EqualFold(v[:len(prefix)], prefix) {
		return false
	}
	got := sha256.Sum256([]byte(v[len(prefix):]))
	ok := 0
	for _, want := range tokens {
		ok |= subtle.ConstantTimeCompare(got[:], want[:])
	}
	return ok == 1
}

// requestID returns the caller's X-Request-Id when it is sane, else a new random one, and
// prepares its header value.
func (x *exchange) requestID(r *http.Request) string {
	id := r.Header.Get("X-Request-Id")
	if id == "" || len(id) > 128 || !visibleASCII(id) {
		var b [16]byte
		_, _ = rand.Read(b[:])
		hex.Encode(x.id[:], b[:])
		// The bytes live in x and are never written again, so no copy is needed.
		id = unsafe.String(&x.id[0], len(x.id))
	}
	x.idHdr[0] = id
	x.st.idHeader = x.idHdr[:]
	return id
}

func visibleASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// recorder captures the status for the access log and metrics, and marks the response
// "Connection: close" while the connection limit has a connection waiting; Unwrap lets the
// ReverseProxy's ResponseController reach Flush on the real writer.
type recorder struct {
	http.ResponseWriter
	status      int
	writeFailed bool       // a write to the caller failed: it went away
	limit       *connLimit // nil when the connection is not limited
	gate        continueGate
}

func (rw *recorder) WriteHeader(code int) {
	if code < 200 && code != http.StatusSwitchingProtocols {
		// An informational response relayed from the upstream (ReverseProxy's
		// Got1xxResponse), maybe once per attempt: the caller sees each at most once.
		rw.gate.relay1xx(rw.ResponseWriter, code)
		return
	}
	if rw.status == 0 && code >= 200 {
		rw.status = code
		rw.limit.closeIfWaiting(rw.Header())
	}
	rw.ResponseWriter.WriteHeader(code)
}

func (rw *recorder) Write(p []byte) (int, error) {
	if rw.status == 0 {
		rw.status = http.StatusOK
		rw.limit.closeIfWaiting(rw.Header())
	}
	n, err := rw.ResponseWriter.Write(p)
	if err != nil {
		rw.writeFailed = true
	}
	return n, err
}

func (rw *recorder) Unwrap() http.ResponseWriter { return rw.ResponseWriter }

// onlyH2C reports whether an Upgrade header offers nothing but HTTP/2 over cleartext.
func onlyH2C(values []string) bool {
	for _, v := range values {
		for p := range strings.SplitSeq(v, ",") {
			if !strings.EqualFold(strings.TrimSpace(p), "h2c") {
				return false
			}
		}
	}
	return true
}

// continueGate lets the caller see at most one 100 Continue and each other 1xx status at
// most once. net/http's server sends its own 100 Continue when the handler first reads a body
// the caller sent with Expect: 100-continue, unless a 100 was written before; the upstream's
// 100 (relayed by ReverseProxy) is passed on only when it comes first, for a streamed body.
type continueGate struct {
	mu       sync.Mutex
	bodyRead bool   // the body was read (the server's own 100 went) or there is none to read
	sent     uint64 // bit c-100: status c was relayed
}

// relay1xx writes the informational status code to w unless the caller has seen it (or,
// for 100, the body was already read).
func (g *continueGate) relay1xx(w http.ResponseWriter, code int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	bit := uint64(1) << uint(code-100)
	if code-100 >= 64 || g.sent&bit != 0 || (code == http.StatusContinue && g.bodyRead) {
		clear(w.Header()) // ReverseProxy copied the 1xx's headers in; they must not leak into the answer
		return
	}
	g.sent |= bit
	w.WriteHeader(code)
}

// continueBody notes the first read of a streamed body, which makes net/http's server send
// its own 100 Continue unless the upstream's went first.
type continueBody struct {
	io.ReadCloser
	gate *continueGate
	read bool
}

func (b *continueBody) Read(p []byte) (int, error) {
	if !b.read {
		b.read = true
		b.gate.mu.Lock()
		b.gate.bodyRead = true
		b.gate.mu.Unlock()
	}
	return b.ReadCloser.Read(p)
}

// setRawTarget makes out's request target the inbound one byte for byte: the raw path (after
// the upstream's own path) and the raw query as the caller sent them. url.URL would re-encode
// a path it cannot represent as sent, and ReverseProxy drops query parameters it cannot parse
// before Rewrite runs.
func setRawTarget(out, in *http.Request, upstream *url.URL) {
	uri := in.RequestURI
	if !strings.HasPrefix(uri, "/") {
		// An absolute-form target ("GET http://host/path"): the destination is ignored and
		// the parsed path kept.
		out.URL.RawQuery = joinQuery(upstream.RawQuery, in.URL.RawQuery)
		return
	}
	path, query, hasQuery := strings.Cut(uri, "?")
	out.URL.RawQuery = joinQuery(upstream.RawQuery, query)
	out.URL.ForceQuery = hasQuery && out.URL.RawQuery == ""
	path = strings.TrimSuffix(upstream.EscapedPath(), "/") + path
	if !strings.HasPrefix(path, "//") { // "//x" in Opaque would read as an authority
		out.URL.Opaque = path
	}
}

func joinQuery(a, b string) string {
	if a == "" || b == "" {
		return a + b
	}
	return a + "&" + b
}

// requestHeadSize is the size of r's request line and header fields as sent (for HTTP/2, as
// if sent in HTTP/1.1), the measure MaxRequestHeadBytes bounds.
func requestHeadSize(r *http.Request) int {
	n := len(r.Method) + 1 + len(r.RequestURI) + len(" HTTP/1.1\r\n") + len("Host: \r\n") + len(r.Host) + 2
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + len(": \r\n") + len(v)
		}
	}
	return n
}

// bufferPool recycles the ReverseProxy's 32 KiB copy buffers.
type bufferPool struct{}

var buffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *(buffers.Get().(*[]byte)) }
func (bufferPool) Put(b []byte) { buffers.Put(&b) }
