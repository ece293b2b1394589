// Command tokenserver is the benchmark's Pleo token endpoint: the project's mock Pleo
// (mockpleo) on loopback, seeded with the benchmark's OAuth companies. Before it listens it
// writes their credentials file (the import/file-store format) and their company ids:
//
//   - -warm companies whose access tokens are valid for -ttl (the steady-state load);
//   - -storm companies whose access tokens the file says expired a minute ago (the refresh
//     storm); the mock still knows their refresh tokens, so each refresh succeeds.
//
// Every credential was last refreshed recently, so no keepalive refresh is due. GET
// /bench/stats answers the mock's counters (mockpleo.Stats) as JSON.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/mockpleo"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address (loopback)")
	warm := flag.Int("warm", 1000, "companies with valid access tokens")
	storm := flag.Int("storm", 200, "companies with expired access tokens")
	ttl := flag.Duration("ttl", time.Hour, "access token lifetime, seeded and refreshed")
	out := flag.String("out", "", "credentials file to write (mode 0600)")
	warmIDs := flag.String("warm-ids", "", "file to write the warm company ids to, one a line")
	stormIDs := flag.String("storm-ids", "", "file to write the storm company ids to, one a line")
	flag.Parse()
	if *out == "" || *warmIDs == "" || *stormIDs == "" {
		log.Fatal("tokenserver: -out, -warm-ids and -storm-ids are required")
	}

	mock := mockpleo.New(mockpleo.Options{AccessTTL: *ttl})
	now := time.Now()
	var creds []credentials.Credential
	seed := func(prefix string, n int, expired bool, idsPath string) {
		var ids strings.Builder
		for i := range n {
			id := fmt.Sprintf("%s-0000-4000-8000-%012d", prefix, i)
			access, refresh, exp := mock.AddOAuthCompany(id, "export-jobs:read")
			last := now
			if expired {
				exp = now.Add(-time.Minute)
				last = exp.Add(-*ttl)
			}
			creds = append(creds, credentials.Credential{
				CompanyID: id, TenantID: fmt.Sprintf("bench-%s-%d", prefix, i), Type: credentials.OAuth2,
				AccessToken: credentials.Secret(access), RefreshToken: credentials.Secret(refresh),
				ExpiresAt: exp, LastRefreshedAt: last, State: credentials.StateActive,
			})
			ids.WriteString(id + "\n")
		}
		if err := os.WriteFile(idsPath, []byte(ids.String()), 0o644); err != nil {
			log.Fatal(err)
		}
	}
	seed("10000000", *warm, false, *warmIDs)
	seed("20000000", *storm, true, *stormIDs)
	data, err := credentials.Marshal(creds)
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(*out, data, 0o600); err != nil {
		log.Fatal(err)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /bench/stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(mock.Stats())
	})
	mux.Handle("/", mock.Handler())
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.Serve(ln))
}
