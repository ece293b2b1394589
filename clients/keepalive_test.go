package clients_test

import (
	"bytes"
	"testing"
)

// TestKeepAlive runs a series of requests — a 401 retry, Expect: 100-continue, HEAD, an
// upstream error among them — through each client that keeps connections open, via a
// forwarder that counts connections: every answer must be the right one, and the client must
// need no more connections through the sidecar than straight to the upstream (one, for most).
func TestKeepAlive(t *testing.T) {
	sc := startSidecar(t)
	series := []spec{
		{name: "ka-get", method: "GET", target: "/v1/vendors?page=1"},
		{name: "ka-post-401", method: "POST", target: "/v1/receipts", body: "json", reject: true},
		{name: "ka-expect", method: "POST", target: "/v1/receipts", body: "multipart", expect: true},
		{name: "ka-expect-401", method: "POST", target: "/v1/receipts", body: "form", expect: true, reject: true},
		{name: "ka-head", method: "HEAD", target: "/v1/vendors"},
		{name: "ka-404", method: "GET", target: "/v1/nothing", response: "404"},
		{name: "ka-chunked", method: "PUT", target: "/v1/receipts/1", body: "multipart", chunked: true},
		{name: "ka-get-last", method: "GET", target: "/v1/vendors?page=2"},
	}
	bodies := t.TempDir()
	for _, cl := range clients {
		if cl.name == "curl" {
			continue // one process, one connection per request
		}
		t.Run(cl.name, func(t *testing.T) {
			ref := newCountingForwarder(t, sc.up.srv.Listener.Addr().String())
			fwd := newCountingForwarder(t, sc.addr)
			var cases, direct []clientCase
			var run []spec
			for _, s := range series {
				if cl.supports(s) {
					run = append(run, s)
					cases = append(cases, s.clientCase(cl.name+"-ka", "proxy", "http://"+fwd.addr(), bodies))
					direct = append(direct, s.clientCase(cl.name+"-ka", "direct", "http://"+ref.addr(), bodies))
				}
			}
			// One process for both series, as the clients keep a pool per origin.
			results := cl.run(t, append(direct, cases...))
			for _, c := range direct {
				res := results[c.ID]
				if res.Ms > 2000 {
					t.Logf("%s straight to the upstream: slow, %.0f ms", c.ID, res.Ms)
				}
				if res.Error != "" || res.Status != 200 {
					t.Fatalf("%s straight to the upstream: status %d, error %q", c.ID, res.Status, res.Error)
				}
			}
			for _, s := range run {
				res, ok := results[s.name+"/proxy"]
				recs := sc.up.records(caseKey(cl.name+"-ka", s.name, "proxy"))
				if res.Ms > 2000 {
					t.Logf("%s: slow, %.0f ms", s.name, res.Ms)
				}
				switch {
				case !ok:
					t.Errorf("%s: no result", s.name)
				case res.Error != "" || res.Status != s.want():
					t.Errorf("%s: status %d, error %q; want %d", s.name, res.Status, res.Error, s.want())
				case len(recs) == 0:
					t.Errorf("%s: the upstream received nothing", s.name)
				case s.method != "HEAD" && !bytes.Equal(res.Body, recs[len(recs)-1].RespBody):
					t.Errorf("%s: body %q, the upstream sent %q: an answer to another request", s.name, trim(res.Body), trim(recs[len(recs)-1].RespBody))
				}
			}
			if n, want := fwd.count(), ref.count(); n != want {
				t.Errorf("%d connections for %d requests, want %d as straight to the upstream: a connection was not kept", n, len(run), want)
			} else {
				t.Logf("%d connections for %d requests", n, len(run))
			}
		})
	}
}
