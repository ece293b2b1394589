package proxy

import (
	"context"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// connLimit bounds the client connections a data listener holds open at once. Each open
// HTTP/1.1 connection costs net/http two goroutines and about 8 KiB of buffers, more while a
// request is in flight, so a burst of connections is what sets the sidecar's peak memory.
//
// A connection beyond the bound is accepted from the kernel but not served until a slot is
// free; until then it costs a file descriptor and no goroutine. While one waits, the limit
// makes room the way nginx does when it runs out of connections: the longest-idle keep-alive
// connection is closed, and every response carries "Connection: close", so that a slot frees
// as soon as a request is answered. With no idle connection, the connection that has waited
// longest for its first request's headers is closed once it has had newConnGrace to send
// them: slow or silent connections cannot hold every slot. Without a waiter, keep-alive is
// untouched.
type connLimit struct {
	slots   chan struct{} // one token per open connection
	waiting atomic.Int32  // Accept calls waiting for a slot (at most 1: one accept loop)
	idled   chan struct{} // a connection went idle (buffered 1)
	metrics ConnMetrics

	mu    sync.Mutex
	idle  connList // guarded by mu
	fresh connList // connections not past their first request's headers (StateNew); guarded by mu
}

// newConnGrace is how long a new connection may take to send its first request's headers
// before a connection waiting for a slot may take its place. Honest clients send them at
// once; a burst of them is not cut short.
const newConnGrace = 500 * time.Millisecond

// connList is a doubly linked list of connections, longest in it first, linked through the
// connections themselves so that the state changes of every request allocate nothing.
type connList struct{ head, tail *limitedConn }

func (q *connList) pushBack(c *limitedConn) {
	c.prev, c.next, c.in = q.tail, nil, q
	if q.tail != nil {
		q.tail.next = c
	} else {
		q.head = c
	}
	q.tail = c
}

func (q *connList) remove(c *limitedConn) {
	if c.in != q {
		return
	}
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		q.head = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	} else {
		q.tail = c.prev
	}
	c.prev, c.next, c.in = nil, nil, nil
}

// ConnMetrics records what the data listener's connection limit does. A nil ConnMetrics
// records nothing; *metrics.Metrics implements it.
type ConnMetrics interface {
	// ClientConnOpened and ClientConnClosed bracket one open client connection.
	ClientConnOpened()
	ClientConnClosed()
	// ClientConnWaited records a connection that waited for a slot before it was served.
	ClientConnWaited()
}

// LimitListener wraps ln so that at most max of its connections are open at once; m (which
// may be nil) records them. A connection beyond max is accepted from the kernel but handed to
// the server only once an earlier one has closed. Served by a server from [NewServer], the
// limit also makes room while a connection waits: it closes the longest-idle keep-alive
// connection, and the [Handler] answers every request with "Connection: close". A max below
// 1 leaves ln unlimited.
func LimitListener(ln net.Listener, max int, m ConnMetrics) net.Listener {
	if max < 1 {
		return ln
	}
	return &limitedListener{Listener: ln, closed: make(chan struct{}), limit: &connLimit{
		slots:   make(chan struct{}, max),
		idled:   make(chan struct{}, 1),
		metrics: m,
	}}
}

// connKey is the context key under which withLimitedConn keeps a request's connection.
type connKey struct{}

// withLimitedConn is the http.Server's ConnContext hook: it makes a request's limited
// connection known to the Handler, which answers "Connection: close" while another waits.
func withLimitedConn(ctx context.Context, c net.Conn) context.Context {
	if lc, ok := c.(*limitedConn); ok {
		return context.WithValue(ctx, connKey{}, lc)
	}
	return ctx
}

// limitOf returns the connection limit a request's connection is under, or nil.
func limitOf(ctx context.Context) *connLimit {
	if lc, ok := ctx.Value(connKey{}).(*limitedConn); ok {
		return lc.limit
	}
	return nil
}

// closeIfWaiting marks a response head "Connection: close" while a connection waits for a
// slot of l, so that answering frees one. A nil l does nothing.
func (l *connLimit) closeIfWaiting(h http.Header) {
	if l != nil && l.waiting.Load() > 0 {
		h.Set("Connection", "close")
	}
}

// trackIdle is the http.Server's ConnState hook: it keeps each limit's lists of idle
// connections and of new ones still reading their first request's headers, longest first,
// and wakes a waiting Accept when a connection joins one.
func trackIdle(c net.Conn, s http.ConnState) {
	lc, ok := c.(*limitedConn)
	if !ok {
		return
	}
	l := lc.limit
	l.mu.Lock()
	if lc.in != nil {
		lc.in.remove(lc)
	}
	switch s {
	case http.StateIdle:
		l.idle.pushBack(lc)
	case http.StateNew:
		l.fresh.pushBack(lc)
	}
	l.mu.Unlock()
	// A waiter counts itself before it looks for a connection to close, so one pushed after
	// its look is signalled here.
	if (s == http.StateIdle || s == http.StateNew) && l.waiting.Load() > 0 {
		select {
		case l.idled <- struct{}{}:
		default:
		}
	}
}

// acquire takes a slot, closing idle connections to make room, until done is closed.
func (l *connLimit) acquire(done <-chan struct{}) bool {
	select {
	case l.slots <- struct{}{}:
		return true
	default:
	}
	if l.metrics != nil {
		l.metrics.ClientConnWaited()
	}
	l.waiting.Add(1)
	defer l.waiting.Add(-1)
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		var expired <-chan time.Time
		if wait := l.makeRoom(time.Now()); wait > 0 {
			if timer == nil {
				timer = time.NewTimer(wait)
			} else {
				timer.Reset(wait)
			}
			expired = timer.C
		}
		select {
		case l.slots <- struct{}{}:
			return true
		case <-l.idled:
		case <-expired:
		case <-done:
			return false
		}
	}
}

// makeRoom closes the connection idle the longest or, with none idle, the one that has
// waited the longest for its first request's headers if it has had newConnGrace; closing it
// frees its slot. Otherwise it returns how long until the oldest new connection's grace ends
// (0: there is none).
func (l *connLimit) makeRoom(now time.Time) time.Duration {
	l.mu.Lock()
	lc := l.idle.head
	if lc != nil {
		l.idle.remove(lc)
	} else if lc = l.fresh.head; lc != nil {
		if wait := lc.accepted.Add(newConnGrace).Sub(now); wait > 0 {
			l.mu.Unlock()
			return wait
		}
		l.fresh.remove(lc)
	}
	l.mu.Unlock()
	if lc != nil {
		_ = lc.Close()
	}
	return 0
}

func (l *connLimit) release() {
	<-l.slots
	if l.metrics != nil {
		l.metrics.ClientConnClosed()
	}
}

type limitedListener struct {
	net.Listener
	limit     *connLimit
	closed    chan struct{}
	closeOnce sync.Once
}

func (ln *limitedListener) Accept() (net.Conn, error) {
	c, err := ln.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if !ln.limit.acquire(ln.closed) {
		_ = c.Close()
		return nil, net.ErrClosed
	}
	if ln.limit.metrics != nil {
		ln.limit.metrics.ClientConnOpened()
	}
	return &limitedConn{Conn: c, limit: ln.limit, accepted: time.Now()}, nil
}

func (ln *limitedListener) Close() error {
	ln.closeOnce.Do(func() { close(ln.closed) })
	return ln.Listener.Close()
}

type limitedConn struct {
	net.Conn
	limit     *connLimit
	accepted  time.Time
	closeOnce sync.Once

	// In limit.idle or limit.fresh, guarded by limit.mu.
	in         *connList
	prev, next *limitedConn
}

// CloseWrite half-closes the connection where the underlying one can (TCP), as net/http does
// before closing a connection whose request it did not read to the end.
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(c.limit.release)
	return err
}
