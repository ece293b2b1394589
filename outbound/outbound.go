// Package outbound provides the one HTTP transport policy for every call the sidecar makes:
// to the upstream API, to the token endpoint (refreshes and the consent flow's code
// exchange), to /v1/installations/me (the consent flow and key discovery).
//
// The policy: no proxy from the environment (HTTP_PROXY, HTTPS_PROXY and NO_PROXY are
// ignored, so credentials go only to the host they are for), the same dial, TLS handshake
// and response-header timeouts everywhere, and redirects never followed.
package outbound

import (
	"net"
	"net/http"
	"time"
)

// The timeouts every outbound connection shares.
const (
	// DialTimeout bounds a TCP connect.
	DialTimeout = 10 * time.Second
	// TLSHandshakeTimeout bounds a TLS handshake.
	TLSHandshakeTimeout = 10 * time.Second
	// DefaultResponseHeaderTimeout is the time allowed to a response's headers when
	// Options has none.
	DefaultResponseHeaderTimeout = 30 * time.Second
)

// Options sizes a transport.
type Options struct {
	// ResponseHeaderTimeout is the time allowed to a response's headers once the request is
	// sent (zero: DefaultResponseHeaderTimeout).
	ResponseHeaderTimeout time.Duration
	// MaxConns bounds the connections open to one host at once (zero: no bound).
	MaxConns int
}

// NewTransport returns a transport that follows the sidecar's outbound policy: no proxy from
// the environment, HTTP/2 over TLS, keep-alive connections, and the shared timeouts.
func NewTransport(o Options) *http.Transport {
	if o.ResponseHeaderTimeout <= 0 {
		o.ResponseHeaderTimeout = DefaultResponseHeaderTimeout
	}
	idle := 512
	if o.MaxConns > 0 {
		idle = o.MaxConns
	}
	return &http.Transport{
		// Never http.ProxyFromEnvironment: a proxy would see the client secret, refresh
		// tokens, API keys and access tokens.
		Proxy: nil,
		DialContext: (&net.Dialer{
			Timeout:   DialTimeout,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxConnsPerHost:       o.MaxConns,
		MaxIdleConns:          idle,
		MaxIdleConnsPerHost:   idle,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   TLSHandshakeTimeout,
		ResponseHeaderTimeout: o.ResponseHeaderTimeout,
		ExpectContinueTimeout: time.Second,
	}
}

// NewClient returns a client over rt (nil: a new NewTransport(Options{})) that never follows
// a redirect: the redirect is the response. timeout bounds a whole call (zero: none).
func NewClient(rt http.RoundTripper, timeout time.Duration) *http.Client {
	if rt == nil {
		rt = NewTransport(Options{})
	}
	return &http.Client{
		Transport:     rt,
		Timeout:       timeout,
		CheckRedirect: NoRedirects,
	}
}

// NoRedirects is an http.Client CheckRedirect that hands back every redirect unfollowed.
func NoRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
