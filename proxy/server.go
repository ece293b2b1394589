package proxy

import (
	"log/slog"
	"net/http"
	"time"
)

// Limits of the data listener's http.Server: a slow or oversized request head is refused
// before it reaches the handler.
const (
	ReadHeaderTimeout = 10 * time.Second
	IdleTimeout       = 120 * time.Second
	MaxHeaderBytes    = 64 << 10
)

// NewServer returns the data listener's http.Server for h, with explicit timeouts and header
// limits and the standard library's own errors bridged to log. Served on a listener from
// [LimitListener], it also makes room for waiting connections (see there).
func NewServer(h http.Handler, log *slog.Logger) *http.Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ConnState:         trackIdle,
		ConnContext:       withLimitedConn,
	}
}
