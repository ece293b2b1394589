package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/metrics"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/outbound"
)

// Authorizer hands out the grant for a company and a new one after a 401.
type Authorizer interface {
	// Authorize returns the grant to send for the company.
	Authorize(ctx context.Context, companyID string) (credentials.Grant, error)
	// Reauthorize is called when the upstream rejected a grant with 401; retry reports whether
	// the returned grant differs and deserves one more attempt.
	Reauthorize(ctx context.Context, companyID string, rejected credentials.Grant) (g credentials.Grant, retry bool, err error)
}

// acceptor is an Authorizer that wants to know when the upstream accepted a grant (a
// *credentials.Broker: it ends a company's 401 cool-down).
type acceptor interface {
	Accepted(ctx context.Context, companyID string, g credentials.Grant)
}

// NewUpstreamTransport returns the transport for the one upstream host: the sidecar's outbound
// policy (package outbound: no proxy from the environment, shared dial and TLS timeouts),
// keep-alive connections sized for a busy sidecar, HTTP/2 over TLS, no compression of its own
// (the caller's Accept-Encoding and the upstream's encoding pass through), timeout as the time
// allowed to the response headers, and at most maxConns connections open at once (0: no
// bound). Requests beyond maxConns wait for a connection to be free: each HTTP/1.1 connection
// costs two goroutines and 8 KiB of buffers, so the bound is what keeps a burst of concurrent
// requests from doubling the sidecar's memory (HTTP/2 carries many requests on each
// connection).
func NewUpstreamTransport(timeout time.Duration, maxConns int) *http.Transport {
	t := outbound.NewTransport(outbound.Options{ResponseHeaderTimeout: timeout, MaxConns: maxConns})
	// The caller's Accept-Encoding goes upstream as sent, and the response as Pleo sent it:
	// the transport neither asks for gzip on its own nor unpacks it.
	t.DisableCompression = true
	return t
}

// DefaultMaxConns is PLEO_PROXY_UPSTREAM_MAX_CONNS's default, and the bound of the transport
// New makes when Options has none.
const DefaultMaxConns = 256

// authTransport makes the attempt ReverseProxy hands it — which already carries the
// company's credential, set in Rewrite — and, after a 401, asks for a new credential and
// retries once with a clone, replaying a body of up to maxReplay bytes.
type authTransport struct {
	base    http.RoundTripper
	auth    Authorizer
	metrics *metrics.Metrics
}

// RoundTrip implements http.RoundTripper. It never modifies req: a retry sends a clone.
func (t *authTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	st := stateFrom(ctx)
	resp, err := t.attempt(req, st)
	if err != nil || resp.StatusCode != http.StatusUnauthorized || st.grant.IsZero() {
		return resp, err
	}
	if !st.body.replayable() {
		t.metrics.AuthRetry(metrics.RetryNotReplayable)
		// Refresh anyway, so that the caller's own retry finds a fresh credential.
		_, _, _ = t.auth.Reauthorize(ctx, st.companyID, st.grant)
		return resp, nil
	}
	next, retry, err := t.auth.Reauthorize(ctx, st.companyID, st.grant)
	if err != nil {
		t.metrics.AuthRetry(metrics.RetryFailed)
		// The token was refused and no new one can be had. Say why, in the sidecar's own
		// words: terminal (401 reauthorization_required), or transient — the token endpoint
		// (502 token_endpoint_error) or the store, e.g. PostgreSQL down or another replica's
		// refresh outcome unknown (503 store_unavailable) — so the caller retries later rather
		// than take Pleo's 401 for a verdict on the credential. Anything else (the caller
		// went away) passes the upstream's 401 back.
		if errors.Is(err, credentials.ErrReauthorizationRequired) || errors.Is(err, credentials.ErrCredentialExpired) ||
			errors.Is(err, credentials.ErrTokenEndpoint) || errors.Is(err, credentials.ErrStoreUnavailable) {
			drain(resp)
			return nil, err
		}
		return resp, nil
	}
	if !retry {
		t.metrics.AuthRetry(metrics.RetryFailed)
		return resp, nil
	}
	drain(resp)
	out := new(http.Request)
	*out = *req
	out.Header = req.Header.Clone()
	out.Header["Authorization"] = next.HeaderValues()
	out.Body, out.GetBody, out.ContentLength = st.body.reopen()
	st.grant = next
	resp, err = t.attempt(out, st)
	if err != nil {
		t.metrics.AuthRetry(metrics.RetryFailed)
		return nil, err
	}
	if resp.StatusCode == http.StatusUnauthorized {
		t.metrics.AuthRetry(metrics.RetryFailed)
	} else {
		t.metrics.AuthRetry(metrics.RetrySucceeded)
	}
	return resp, nil
}

// attempt sends one request upstream and counts it; an answer other than 401 (and 5xx) is
// reported to an acceptor.
func (t *authTransport) attempt(req *http.Request, st *requestState) (*http.Response, error) {
	st.attempts++
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		t.metrics.UpstreamResponse(0)
		return nil, err
	}
	t.metrics.UpstreamResponse(resp.StatusCode)
	if a, ok := t.auth.(acceptor); ok && resp.StatusCode != http.StatusUnauthorized && resp.StatusCode < 500 && !st.grant.IsZero() {
		a.Accepted(req.Context(), st.companyID, st.grant)
	}
	return resp, nil
}

// replayBody is a request body held for a possible retry. A nil *replayBody is an empty
// body, which is always replayable.
type replayBody struct {
	buf      []byte
	streamed bool // over the limit: sent once, unbuffered, never replayed
}

func (b *replayBody) replayable() bool { return b == nil || !b.streamed }

// reopen returns a fresh reader over the buffered body for the retry.
func (b *replayBody) reopen() (io.ReadCloser, func() (io.ReadCloser, error), int64) {
	if b == nil {
		return nil, nil, 0
	}
	get := func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b.buf)), nil }
	r, _ := get()
	return r, get, int64(len(b.buf))
}

// bufferBody reads the inbound body of r, if it has one of up to limit bytes, so it can be
// replayed, and points r at the buffered copy; a larger or unbounded one is left streaming
// (what was read to find that out is put back in front). It modifies r, which must be the
// handler's own shallow copy of the inbound request.
func bufferBody(r *http.Request, limit int64) (*replayBody, error) {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return nil, nil
	}
	if r.ContentLength > limit {
		return &replayBody{streamed: true}, nil
	}
	n := r.ContentLength
	if n < 0 {
		n = 512
	}
	buf := bytes.NewBuffer(make([]byte, 0, n))
	read, err := buf.ReadFrom(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return nil, &bodyError{err}
	}
	if read > limit {
		r.Body = readCloser{io.MultiReader(bytes.NewReader(buf.Bytes()), r.Body), r.Body}
		return &replayBody{streamed: true}, nil
	}
	b := &replayBody{buf: buf.Bytes()}
	r.Body, r.GetBody, r.ContentLength = b.reopen()
	return b, nil
}

// bodyError is a failure to read the client's request body.
type bodyError struct{ err error }

func (e *bodyError) Error() string { return "proxy: reading the request body: " + e.err.Error() }
func (e *bodyError) Unwrap() error { return e.err }

type readCloser struct {
	io.Reader
	io.Closer
}

// drain reads a little of a discarded response so its connection can be reused, and closes it.
func drain(resp *http.Response) {
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
	_ = resp.Body.Close()
}
