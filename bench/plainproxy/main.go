// Command plainproxy is the benchmark's baseline: a plain httputil.ReverseProxy that adds a
// static Authorization header. It uses the sidecar's own upstream transport
// (proxy.NewUpstreamTransport: keep-alive pool, timeouts) and data-listener limits
// (proxy.NewServer), so that the comparison isolates what the sidecar does per request
// beyond proxying: company selection, the credential lookup, metrics and its own handler.
// Like any plain ReverseProxy it has no BufferPool (each response copy allocates a 32 KiB
// buffer); -buffer-pool gives it one like the sidecar's (a sync.Pool of 32 KiB buffers), for
// the stricter baseline (c′) of bench/run.
package main

import (
	"flag"
	"log"
	"net"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/proxy"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address (loopback)")
	upstream := flag.String("upstream", "", "upstream base URL, e.g. http://127.0.0.1:9000")
	pooled := flag.Bool("buffer-pool", false, "recycle the response copy buffers (as the sidecar does)")
	flag.Parse()
	u, err := url.Parse(*upstream)
	if err != nil || u.Host == "" {
		log.Fatalf("plainproxy: -upstream %q is not an absolute URL", *upstream)
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.Out.Header.Set("Authorization", "Bearer static-token")
		},
		Transport: proxy.NewUpstreamTransport(30*time.Second, proxy.DefaultMaxConns),
	}
	if *pooled {
		rp.BufferPool = &bufferPool{pool: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(proxy.NewServer(rp, nil).Serve(ln))
}

type bufferPool struct{ pool sync.Pool }

func (p *bufferPool) Get() []byte  { return *(p.pool.Get().(*[]byte)) }
func (p *bufferPool) Put(b []byte) { p.pool.Put(&b) }
