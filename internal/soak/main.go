// Command soak runs pleo-auth-proxy under mixed load for a while and reports what its callers
// saw and how its goroutines and memory moved (issue 9, item 4). scripts/soak builds and runs
// it; see that script for the options.
//
// This process hosts the mock Pleo (package mockpleo: rotating refresh tokens with reuse
// detection, an echo API that checks every credential, streaming) with 5-second access
// tokens, writes a credentials file for its companies, and starts the sidecar binary as a
// child process on that file. Then, until the duration is over:
//
//   - workers send a mix of requests at a fixed rate over every company: small GETs, small
//     POSTs (checked byte for byte by the echo), bodies larger than MAX_REPLAY_BYTES, 1-second
//     streams, and selection by tenant header; every answer must come from the intended
//     company's credential;
//   - every -revoke-every, one company's access token is revoked server side: the sidecar
//     must recover (401, refresh, one retry) without its caller noticing — except for a body
//     over MAX_REPLAY_BYTES, which is not replayed: the caller gets Pleo's 401 and retries
//     once, as the README tells callers to; those are counted apart;
//   - every -grant-revoke-every, one company's whole grant is revoked (DELETE
//     /v1/installations/me through the sidecar, as an uninstall does): the sidecar gets
//     invalid_grant and answers reauthorization_required, as it must; a few seconds later the
//     company "reconnects": the mock grants it anew and `pleo-auth-proxy credentials import`
//     (a separate process, under the file lock) stores the new pair, which the sidecar picks
//     up by polling. Errors of that company from the revocation until its first success after
//     the import are expected and counted apart; every other error is unexpected;
//   - every -sample, /metrics is read: go_goroutines, process_resident_memory_bytes,
//     process_open_fds, pending token writes, token refreshes; and /readyz.
//
// It prints one table row per sample and a summary, and exits 1 when a caller saw an
// unexpected error, a response came from the wrong company's credential, or the mock saw a
// refresh token presented twice (beyond the grant revocations).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/mockpleo"
)

type options struct {
	sidecar          string
	duration         time.Duration
	companies        int
	apiKeys          int
	rps              int
	workers          int
	sample           time.Duration
	revokeEvery      time.Duration
	grantRevokeEvery time.Duration
	accessTTL        time.Duration
	maxReplay        int
	keep             bool
}

func main() {
	var o options
	flag.StringVar(&o.sidecar, "sidecar", "", "the pleo-auth-proxy binary (required)")
	flag.DurationVar(&o.duration, "duration", 10*time.Minute, "how long the load runs")
	flag.IntVar(&o.companies, "companies", 12, "OAuth companies")
	flag.IntVar(&o.apiKeys, "api-keys", 2, "Integrated API key companies")
	flag.IntVar(&o.rps, "rps", 100, "requests per second, all kinds together")
	flag.IntVar(&o.workers, "workers", 24, "concurrent callers")
	flag.DurationVar(&o.sample, "sample", 15*time.Second, "metrics sampling interval (10s..30s is the issue's range)")
	flag.DurationVar(&o.revokeEvery, "revoke-every", 5*time.Second, "revoke one company's access token server side this often")
	flag.DurationVar(&o.grantRevokeEvery, "grant-revoke-every", 40*time.Second, "revoke one company's whole grant this often (0: never)")
	flag.DurationVar(&o.accessTTL, "access-ttl", 5*time.Second, "access token lifetime at the mock")
	flag.IntVar(&o.maxReplay, "max-replay-bytes", 256<<10, "PLEO_PROXY_MAX_REPLAY_BYTES of the sidecar")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory (sidecar log, credentials file)")
	flag.Parse()
	if err := validate(o); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ok, err := run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	if !ok {
		os.Exit(1)
	}
}

func validate(o options) error {
	switch {
	case o.sidecar == "":
		return errors.New("-sidecar is required")
	case o.duration < 10*time.Second:
		return errors.New("-duration must be at least 10s")
	case o.companies < 2:
		return errors.New("-companies must be at least 2")
	case o.rps < 1 || o.workers < 1:
		return errors.New("-rps and -workers must be positive")
	case o.sample < time.Second:
		return errors.New("-sample must be at least 1s")
	case o.accessTTL < 3*time.Second:
		return errors.New("-access-ttl must be at least 3s (the sidecar refreshes 1s before expiry)")
	}
	return nil
}

func run(ctx context.Context, o options) (bool, error) {
	dir, err := os.MkdirTemp("", "pleo-soak-")
	if err != nil {
		return false, err
	}
	if o.keep {
		fmt.Fprintln(os.Stderr, "soak: keeping", dir)
	} else {
		defer os.RemoveAll(dir)
	}

	mock := mockpleo.New(mockpleo.Options{AccessTTL: o.accessTTL})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return false, err
	}
	mockSrv := &http.Server{Handler: mock.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go mockSrv.Serve(ln)
	defer mockSrv.Close()
	mockURL := "http://" + ln.Addr().String()

	fleet, err := seedFleet(mock, o, filepath.Join(dir, "credentials.json"))
	if err != nil {
		return false, err
	}
	sc, err := startSidecar(ctx, o, dir, mockURL, fleet.path)
	if err != nil {
		return false, err
	}
	defer sc.stop()

	fmt.Printf("soak: %s of load at %d req/s (%d callers) on %d OAuth + %d API key companies; access TTL %s; "+
		"access revocation every %s, grant revocation every %s; sampling every %s\n",
		o.duration, o.rps, o.workers, o.companies, o.apiKeys, o.accessTTL, o.revokeEvery, o.grantRevokeEvery, o.sample)
	fmt.Printf("soak: sidecar pid %d, data %s, admin %s, mock %s\n\n", sc.cmd.Process.Pid, sc.data, sc.admin, mockURL)

	l := newLoad(o, sc, mock, fleet)
	report := l.run(ctx)
	ok := report.print(os.Stdout, mock.Stats(), sc)
	if err := sc.stop(); err != nil {
		fmt.Printf("sidecar shutdown: %v\n", err)
		ok = false
	}
	return ok, nil
}
