package main

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMaxClientConnsInBinary shows PLEO_PROXY_MAX_CLIENT_CONNS wired in the built binary:
// with a bound of 1, a second caller is served once the first, idle, connection is closed to
// make room, and the metrics count the wait.
func TestMaxClientConnsInBinary(t *testing.T) {
	line := startDevSidecar(t, "PLEO_PROXY_MAX_CLIENT_CONNS=1")
	if line["max_client_conns"] != float64(1) {
		t.Errorf("start-up line: max_client_conns = %v, want 1", line["max_client_conns"])
	}
	listen, admin := line["listen"].(string), line["admin"].(string)

	exchange := func(c net.Conn, r *bufio.Reader) {
		t.Helper()
		if _, err := io.WriteString(c, "GET /v1/companies HTTP/1.1\r\nHost: sidecar\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	a, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ra := bufio.NewReader(a)
	exchange(a, ra) // a stays open, idle
	b, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	exchange(b, bufio.NewReader(b))
	_ = a.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := ra.ReadByte(); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the idle connection was not closed to make room: read %v", err)
	}

	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"\npleo_proxy_client_connections 1\n", "\npleo_proxy_client_connection_waits_total 1\n"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", strings.TrimSpace(want))
		}
	}
}
