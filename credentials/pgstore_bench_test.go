package credentials

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// BenchmarkPGRefreshCoordination measures the cross-process refresh lock: N worker processes
// (this test binary re-executed) each refresh credentials through LockRefresh, Lease, a
// simulated token exchange of pgBenchExchange, and Commit, on pgBenchCompanies companies
// shared by all of them (so they contend). It reports the lock wait (LockRefresh) and hold
// time (lock taken to commit durable) percentiles over every refresh of every process.
//
//	scripts/with-postgres go test -run '^$' -bench PGRefreshCoordination -benchtime 600x ./credentials/
func BenchmarkPGRefreshCoordination(b *testing.B) {
	for _, procs := range []int{3, 10} {
		b.Run(fmt.Sprintf("procs=%d", procs), func(b *testing.B) {
			dsn := pgTestDB(b)
			seed := pgOpen(b, dsn, PGStoreOptions{})
			var creds []Credential
			for i := range pgBenchCompanies {
				creds = append(creds, stOAuth(i, ""))
			}
			if err := seed.PutAll(context.Background(), creds, false); err != nil {
				b.Fatal(err)
			}
			perProc := max(1, b.N/procs)
			type worker struct {
				cmd   *exec.Cmd
				stdin io.WriteCloser
				out   *bufio.Scanner
			}
			workers := make([]worker, procs)
			for i := range workers {
				cmd := exec.Command(os.Args[0], "-test.run=^TestPGBenchWorker$", "-test.count=1")
				cmd.Env = append(os.Environ(), "PLEO_PROXY_PG_BENCH_WORKER="+dsn, "PLEO_PROXY_PG_BENCH_OPS="+strconv.Itoa(perProc))
				stdin, _ := cmd.StdinPipe()
				stdout, _ := cmd.StdoutPipe()
				cmd.Stderr = os.Stderr
				if err := cmd.Start(); err != nil {
					b.Fatal(err)
				}
				workers[i] = worker{cmd, stdin, bufio.NewScanner(stdout)}
				for workers[i].out.Scan() && workers[i].out.Text() != "ready" {
				}
			}
			var mu sync.Mutex
			var waits, holds []time.Duration
			var wg sync.WaitGroup
			b.ResetTimer()
			for _, w := range workers {
				_, _ = io.WriteString(w.stdin, "go\n")
			}
			for _, w := range workers {
				wg.Go(func() {
					for w.out.Scan() {
						f := strings.Fields(w.out.Text())
						if len(f) != 3 || f[0] != "op" {
							continue
						}
						wait, _ := strconv.ParseInt(f[1], 10, 64)
						hold, _ := strconv.ParseInt(f[2], 10, 64)
						mu.Lock()
						waits = append(waits, time.Duration(wait))
						holds = append(holds, time.Duration(hold))
						mu.Unlock()
					}
					if err := w.cmd.Wait(); err != nil {
						b.Errorf("worker: %v", err)
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			if len(waits) != perProc*procs {
				b.Fatalf("%d refreshes reported, want %d", len(waits), perProc*procs)
			}
			q := func(d []time.Duration, p float64) float64 {
				slices.Sort(d)
				return float64(d[int(p*float64(len(d)-1))].Microseconds()) / 1000
			}
			b.ReportMetric(q(waits, 0.5), "wait-p50-ms")
			b.ReportMetric(q(waits, 0.99), "wait-p99-ms")
			b.ReportMetric(q(holds, 0.5), "hold-p50-ms")
			b.ReportMetric(q(holds, 0.99), "hold-p99-ms")
			b.ReportMetric(0, "ns/op")
		})
	}
}

const (
	pgBenchCompanies = 10
	pgBenchExchange  = 2 * time.Millisecond
)

// TestPGBenchWorker is BenchmarkPGRefreshCoordination's worker process; it does nothing
// unless started by the benchmark.
func TestPGBenchWorker(t *testing.T) {
	dsn := os.Getenv("PLEO_PROXY_PG_BENCH_WORKER")
	if dsn == "" {
		return // not a worker
	}
	ops, _ := strconv.Atoi(os.Getenv("PLEO_PROXY_PG_BENCH_OPS"))
	s := pgOpen(t, dsn, PGStoreOptions{})
	ctx := context.Background()
	fmt.Println("ready")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	out := bufio.NewWriter(os.Stdout)
	for i := range ops {
		id := stCompany(rand.N(pgBenchCompanies))
		t0 := time.Now()
		l, err := s.LockRefresh(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		t1 := time.Now()
		if err := l.Lease(ctx, time.Minute); err != nil {
			t.Fatal(err)
		}
		time.Sleep(pgBenchExchange) // the token endpoint
		next := l.Current()
		next.RefreshToken = Secret(fmt.Sprintf("rt-%d-%d-%d", os.Getpid(), i, t1.UnixNano()))
		if _, err := l.Commit(ctx, next); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(out, "op %d %d\n", t1.Sub(t0).Nanoseconds(), time.Since(t1).Nanoseconds())
	}
	_ = out.Flush()
}
