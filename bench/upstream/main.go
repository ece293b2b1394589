// Command upstream is the benchmark's fast upstream: it answers every request at once with a
// small fixed JSON body, so that what the benchmark measures is whatever sits in front of it.
// It counts the requests it saw with and without an Authorization header (GET /bench/stats,
// JSON), so the benchmark can check that a proxy really added one. It serves HTTP/1.1 and
// HTTP/2 cleartext with prior knowledge (h2c), so the h2c round can measure it directly.
package main

import (
	"encoding/json"
	"flag"
	"log"
	"net"
	"net/http"
	"sync/atomic"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address (loopback)")
	flag.Parse()

	var withAuth, withoutAuth atomic.Int64
	body := []byte(`{"data":[{"id":"5a1c2f0e","status":"done"}],"pagination":{"hasNextPage":false}}`)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /bench/stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]int64{"with_authorization": withAuth.Load(), "without_authorization": withoutAuth.Load()})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if len(r.Header["Authorization"]) > 0 {
			withAuth.Add(1)
		} else {
			withoutAuth.Add(1)
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: mux, Protocols: &protocols, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second}
	log.Fatal(srv.Serve(ln))
}
