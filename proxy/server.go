package proxy

import (
	"log/slog"
	"net/http"
	"time"
)

// Limits of the data listener's http.Server: a slow or oversized request head is refused
// before it reaches the upstream.
const (
	// ReadHeaderTimeout is the time allowed to a request's line and header fields.
	ReadHeaderTimeout = 10 * time.Second
	// ClientTokenReadHeaderTimeout replaces ReadHeaderTimeout when callers must present a
	// client token (a listener beyond loopback): a connection that has not sent its headers
	// by then is closed, so that slow connections cannot hold the connection slots.
	ClientTokenReadHeaderTimeout = 3 * time.Second
	IdleTimeout                  = 120 * time.Second
	// MaxRequestHeadBytes bounds a request's line and header fields: a larger request is
	// answered 431 request_header_too_large by the Handler, on new and reused connections
	// alike. (HTTP/2 requests are measured as their HTTP/1.1 form.)
	MaxRequestHeadBytes = 64 << 10
	// MaxHeaderBytes is net/http's own bound, a backstop far above MaxRequestHeadBytes:
	// only a head beyond it gets net/http's plain-text 431 (and an HTTP/2 stream is reset).
	MaxHeaderBytes = 256 << 10
)

// NewServer returns the data listener's http.Server for h, with explicit timeouts and header
// limits and the standard library's own errors bridged to log. It serves HTTP/1.1 and HTTP/2
// without TLS ("prior knowledge", as curl --http2-prior-knowledge); the HTTP/2 preface is
// never seen by h. When h is a [Handler] that requires client tokens, the header timeout is
// ClientTokenReadHeaderTimeout. Served on a listener from [LimitListener], it also makes room
// for waiting connections (see there).
func NewServer(h http.Handler, log *slog.Logger) *http.Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	headerTimeout := ReadHeaderTimeout
	if ph, ok := h.(*Handler); ok && len(*ph.clientTokens.Load()) > 0 {
		headerTimeout = ClientTokenReadHeaderTimeout
	}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	return &http.Server{
		Handler:           h,
		Protocols:         &protocols,
		ReadHeaderTimeout: headerTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ConnState:         trackIdle,
		ConnContext:       withLimitedConn,
	}
}
