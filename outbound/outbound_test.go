package outbound_test

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"sync/atomic"
	"testing"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/outbound"
)

// TestNoProxyNoRedirects: with every proxy variable pointing at a counting listener, a call
// to a server named by host name (Go never proxies loopback addresses) goes to it directly,
// and a redirect is handed back, not followed.
func TestNoProxyNoRedirects(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var proxied atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			proxied.Add(1)
			c.Close()
		}
	}()
	for _, k := range []string{"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"} {
		t.Setenv(k, "http://"+ln.Addr().String())
	}
	t.Setenv("NO_PROXY", "")
	t.Setenv("no_proxy", "")

	var followed atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/elsewhere" {
			followed.Add(1)
		}
		http.Redirect(w, r, "/elsewhere", http.StatusFound)
	}))
	defer srv.Close()
	name, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	if addrs, err := net.LookupHost(name); err != nil || len(addrs) == 0 || !net.ParseIP(addrs[0]).IsLoopback() {
		t.Fatalf("host name %q must resolve to loopback for this test: %v %v", name, addrs, err)
	}
	u, _ := url.Parse(srv.URL)
	u.Host = net.JoinHostPort(name, u.Port())

	resp, err := outbound.NewClient(nil, 0).Get(u.String() + "/start")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || followed.Load() != 0 {
		t.Fatalf("status %d, redirect followed %d times", resp.StatusCode, followed.Load())
	}
	if n := proxied.Load(); n != 0 {
		t.Fatalf("the proxy from the environment got %d connections", n)
	}
}
