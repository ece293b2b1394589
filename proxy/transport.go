package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/metrics"
)

// Authorizer hands out the grant for a company and a new one after a 401.
type Authorizer interface {
	// Authorize returns the grant to send for the company.
	Authorize(ctx context.Context, companyID string) (credentials.Grant, error)
	// Reauthorize is called when the upstream rejected a grant with 401; retry reports whether
	// the returned grant differs and deserves one more attempt.
	Reauthorize(ctx context.Context, companyID string, rejected credentials.Grant) (g credentials.Grant, retry bool, err error)
}

// NewUpstreamTransport returns the transport for the one upstream host: keep-alive
// connections sized for a busy sidecar, HTTP/2 over TLS, no proxy from the environment
// (credentials go only to the upstream), and timeout as the time allowed to the response
// headers.
func NewUpstreamTransport(timeout time.Duration) *http.Transport {
	return &http.Transport{
		Proxy: nil,
		DialContext: (&net.Dialer{
			Timeout:   10 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          512,
		MaxIdleConnsPerHost:   512,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: timeout,
		ExpectContinueTimeout: time.Second,
	}
}

// authTransport injects the company's credential and retries once after a 401, replaying a
// body of up to maxReplay bytes.
type authTransport struct {
	base      http.RoundTripper
	auth      Authorizer
	maxReplay int64
	metrics   *metrics.Metrics
}

// RoundTrip implements http.RoundTripper. It never modifies req: it sends clones.
func (t *authTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	st := stateFrom(ctx)
	grant, err := t.auth.Authorize(ctx, st.companyID)
	if err != nil {
		closeBody(req)
		return nil, err
	}
	st.credentialType = string(grant.Type)
	body, replayable, err := bufferBody(req, t.maxReplay)
	if err != nil {
		return nil, err
	}
	resp, err := t.send(req, grant, body, st)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}

	if !replayable {
		t.metrics.AuthRetry(metrics.RetryNotReplayable)
		// Refresh anyway, so that the caller's own retry finds a fresh credential.
		_, _, _ = t.auth.Reauthorize(ctx, st.companyID, grant)
		return resp, nil
	}
	next, retry, err := t.auth.Reauthorize(ctx, st.companyID, grant)
	if err != nil {
		t.metrics.AuthRetry(metrics.RetryFailed)
		if errors.Is(err, credentials.ErrReauthorizationRequired) || errors.Is(err, credentials.ErrCredentialExpired) {
			drain(resp)
			return nil, err
		}
		return resp, nil // nothing better to offer: the upstream's 401 passes through
	}
	if !retry {
		t.metrics.AuthRetry(metrics.RetryFailed)
		return resp, nil
	}
	drain(resp)
	resp, err = t.send(req, next, body, st)
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

// send makes one attempt with grant: a shallow clone of req with its own header map.
func (t *authTransport) send(req *http.Request, grant credentials.Grant, body *replayBody, st *requestState) (*http.Response, error) {
	out := new(http.Request)
	*out = *req
	out.Header = req.Header.Clone()
	out.Header.Set("Authorization", grant.Authorization())
	if body != nil {
		out.Body, out.GetBody, out.ContentLength = body.open()
	}
	st.attempts++
	resp, err := t.base.RoundTrip(out)
	if err != nil {
		return nil, err
	}
	t.metrics.UpstreamResponse(resp.StatusCode)
	return resp, nil
}

// replayBody is a request body held for a possible retry, or a one-shot stream.
type replayBody struct {
	buf    []byte
	stream io.ReadCloser // non-nil: not replayable
	length int64
}

func (b *replayBody) open() (io.ReadCloser, func() (io.ReadCloser, error), int64) {
	if b.stream != nil {
		s := b.stream
		b.stream = http.NoBody // a second open would be a bug; send nothing rather than half
		return s, nil, b.length
	}
	get := func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b.buf)), nil }
	r, _ := get()
	return r, get, int64(len(b.buf))
}

// bufferBody reads a body of up to limit bytes so it can be replayed; a larger or unbounded
// one streams unbuffered. A nil result means no body.
func bufferBody(req *http.Request, limit int64) (*replayBody, bool, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return nil, true, nil
	}
	if req.ContentLength > limit {
		return &replayBody{stream: req.Body, length: req.ContentLength}, false, nil
	}
	n := req.ContentLength
	if n < 0 {
		n = 512
	}
	buf := bytes.NewBuffer(make([]byte, 0, n))
	read, err := buf.ReadFrom(io.LimitReader(req.Body, limit+1))
	if err != nil {
		closeBody(req)
		return nil, false, &bodyError{err}
	}
	if read > limit {
		// Unbounded body over the limit: send what was read, then the rest, once.
		return &replayBody{
			stream: readCloser{io.MultiReader(bytes.NewReader(buf.Bytes()), req.Body), req.Body},
			length: -1,
		}, false, nil
	}
	closeBody(req)
	return &replayBody{buf: buf.Bytes()}, true, nil
}

// bodyError is a failure to read the client's request body.
type bodyError struct{ err error }

func (e *bodyError) Error() string { return "proxy: reading the request body: " + e.err.Error() }
func (e *bodyError) Unwrap() error { return e.err }

type readCloser struct {
	io.Reader
	io.Closer
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

// drain reads a little of a discarded response so its connection can be reused, and closes it.
func drain(resp *http.Response) {
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
	_ = resp.Body.Close()
}
