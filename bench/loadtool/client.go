package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
)

// ports prints n free loopback ports (all held open together, so they differ).
func ports(args []string) error {
	if len(args) != 1 {
		return errors.New("ports N")
	}
	n, err := strconv.Atoi(args[0])
	if err != nil || n < 1 || n > 100 {
		return fmt.Errorf("ports: bad count %q", args[0])
	}
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		lns = append(lns, ln)
		fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	}
	return nil
}

// wait polls a URL until it answers 200 and prints the time since -since-ns (Unix
// nanoseconds, e.g. from `date +%s%N` just before the exec) or since it started.
func wait(args []string) error {
	fs := flag.NewFlagSet("wait", flag.ContinueOnError)
	u := fs.String("url", "", "URL to poll")
	timeout := fs.Duration("timeout", 30*time.Second, "give up after")
	since := fs.Int64("since-ns", 0, "report the time elapsed since this Unix time in nanoseconds")
	interval := fs.Duration("interval", 2*time.Millisecond, "poll interval")
	if err := fs.Parse(args); err != nil {
		return err
	}
	start := time.Now()
	if *since > 0 {
		start = time.Unix(0, *since)
	}
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	deadline := time.Now().Add(*timeout)
	for time.Now().Before(deadline) {
		resp, err := client.Get(*u)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				fmt.Printf("elapsed_ms=%.1f\n", float64(time.Since(start).Microseconds())/1000)
				return nil
			}
		}
		time.Sleep(*interval)
	}
	return fmt.Errorf("wait: %s did not answer 200 within %s", *u, *timeout)
}

// creds writes n fake oauth2 credentials, valid for ttl and refreshed just now (so no
// refresh or keepalive is due), with tenant ids, in the file store's plain format.
func creds(args []string) error {
	fs := flag.NewFlagSet("creds", flag.ContinueOnError)
	n := fs.Int("n", 100000, "credentials")
	out := fs.String("out", "", "credentials file (mode 0600)")
	idsPath := fs.String("ids", "", "file for the company ids, one a line")
	prefix := fs.String("prefix", "30000000", "first 8 hex digits of every company id")
	ttl := fs.Duration("ttl", time.Hour, "access token validity")
	tokenChars := fs.Int("token-chars", 43, "characters per token (43: 32 random bytes, base64url, as mockpleo's)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" || *idsPath == "" || *n < 1 || *n > 10_000_000 || *tokenChars < 8 {
		return errors.New("creds: -out, -ids, 1 <= -n <= 10000000 and -token-chars >= 8 are required")
	}
	now := time.Now().UTC().Truncate(time.Second)
	list := make([]credentials.Credential, 0, *n)
	ids := bufio.NewWriter(nil)
	idsFile, err := os.Create(*idsPath)
	if err != nil {
		return err
	}
	defer idsFile.Close()
	ids.Reset(idsFile)
	for i := range *n {
		id := fmt.Sprintf("%s-0000-4000-8000-%012d", *prefix, i)
		list = append(list, credentials.Credential{
			CompanyID: id, TenantID: fmt.Sprintf("bench-mem-%d", i), Type: credentials.OAuth2,
			AccessToken: credentials.Secret(token(*tokenChars)), RefreshToken: credentials.Secret(token(*tokenChars)),
			ExpiresAt: now.Add(*ttl), LastRefreshedAt: now, State: credentials.StateActive,
		})
		fmt.Fprintln(ids, id)
	}
	if err := ids.Flush(); err != nil {
		return err
	}
	data, err := credentials.Marshal(list)
	if err != nil {
		return err
	}
	return os.WriteFile(*out, data, 0o600)
}

func token(chars int) string {
	b := make([]byte, (chars*6+7)/8)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)[:chars]
}

func readIDs(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	ids := strings.Fields(string(data))
	if len(ids) == 0 {
		return nil, fmt.Errorf("%s: no company ids", path)
	}
	return ids, nil
}

func newClient(conns int, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:               nil,
			MaxIdleConns:        conns,
			MaxIdleConnsPerHost: conns,
			IdleConnTimeout:     120 * time.Second,
			DisableCompression:  true,
		},
	}
}

// outcome counts answers by class.
type outcome struct {
	ok, non2xx, errs atomic.Int64
	statusMu         sync.Mutex
	statuses         map[int]int
	firstErr         atomic.Value
}

func (o *outcome) record(resp *http.Response, err error) {
	if err != nil {
		o.errs.Add(1)
		o.firstErr.CompareAndSwap(nil, err.Error())
		return
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 == 2 {
		o.ok.Add(1)
	} else {
		o.non2xx.Add(1)
	}
	o.statusMu.Lock()
	if o.statuses == nil {
		o.statuses = make(map[int]int)
	}
	o.statuses[resp.StatusCode]++
	o.statusMu.Unlock()
}

func (o *outcome) print(prefix string) {
	fmt.Printf("%sok=%d %snon2xx=%d %serrors=%d", prefix, o.ok.Load(), prefix, o.non2xx.Load(), prefix, o.errs.Load())
	var codes []int
	for c := range o.statuses {
		codes = append(codes, c)
	}
	sort.Ints(codes)
	var parts []string
	for _, c := range codes {
		parts = append(parts, fmt.Sprintf("%d:%d", c, o.statuses[c]))
	}
	fmt.Printf(" %sstatuses=%s", prefix, strings.Join(parts, ","))
	if e, ok := o.firstErr.Load().(string); ok {
		fmt.Fprintf(os.Stderr, "loadtool: first error (%s): %s\n", strings.TrimSuffix(prefix, "_"), e)
	}
}

func get(ctx context.Context, client *http.Client, url, header, company string, trace *httptrace.ClientTrace) (*http.Response, error) {
	if trace != nil {
		ctx = httptrace.WithClientTrace(ctx, trace)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set(header, company)
	return client.Do(req)
}

// touch sends one request for each of the first n companies, c at a time.
func touch(args []string) error {
	fs := flag.NewFlagSet("touch", flag.ContinueOnError)
	url := fs.String("url", "", "request URL (the sidecar's data listener and a path)")
	idsPath := fs.String("ids", "", "company ids, one a line")
	n := fs.Int("n", 0, "companies to touch (0: all)")
	c := fs.Int("c", 16, "concurrent requests")
	header := fs.String("header", "X-Pleo-Company-Id", "company header")
	timeout := fs.Duration("timeout", 120*time.Second, "bound on the whole run")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ids, err := readIDs(*idsPath)
	if err != nil {
		return err
	}
	if *n > 0 && *n < len(ids) {
		ids = ids[:*n]
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	client := newClient(*c, 30*time.Second)
	var o outcome
	next := make(chan string)
	var wg sync.WaitGroup
	start := time.Now()
	for range max(*c, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range next {
				o.record(get(ctx, client, *url, *header, id, nil))
			}
		}()
	}
feed:
	for _, id := range ids {
		select {
		case next <- id:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	fmt.Printf("requests=%d seconds=%.2f ", len(ids), time.Since(start).Seconds())
	o.print("")
	fmt.Println()
	return nil
}

// storm opens one connection per request it will send (by a first request for a warm
// company each), then for every storm company releases -per concurrent requests at the same
// instant and measures each from that instant to the end of its response body.
func storm(args []string) error {
	fs := flag.NewFlagSet("storm", flag.ContinueOnError)
	url := fs.String("url", "", "request URL (the sidecar's data listener and a path)")
	idsPath := fs.String("ids", "", "storm company ids (expired access tokens), one a line")
	warmPath := fs.String("prewarm-ids", "", "warm company ids, to open the connections first (empty: no pre-warming)")
	per := fs.Int("per", 10, "concurrent requests per company")
	header := fs.String("header", "X-Pleo-Company-Id", "company header")
	timeout := fs.Duration("timeout", 60*time.Second, "bound on each phase")
	hwmPID := fs.Int("hwm-pid", 0, "after pre-warming, print this process's VmHWM and reset it (/proc/PID/clear_refs), so that the storm's own peak can be read afterwards")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ids, err := readIDs(*idsPath)
	if err != nil {
		return err
	}
	total := len(ids) * *per
	if total > 20000 {
		return fmt.Errorf("storm: %d requests is more than this tool's bound of 20000", total)
	}
	client := newClient(total+16, *timeout)

	if *warmPath != "" {
		warm, err := readIDs(*warmPath)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		var o outcome
		var wg sync.WaitGroup
		gate := make(chan struct{})
		for i := range total {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				o.record(get(ctx, client, *url, *header, warm[i%len(warm)], nil))
			}()
		}
		close(gate)
		wg.Wait()
		cancel()
		o.print("prewarm_")
		fmt.Print(" ")
	}
	if *hwmPID > 0 {
		kb, err := statusKB(*hwmPID, "VmHWM")
		if err != nil {
			return err
		}
		// Writing 5 to clear_refs resets the peak RSS to the current RSS (Linux 4.0+).
		reset := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", *hwmPID), []byte("5"), 0) == nil
		fmt.Printf("hwm_prewarm_kb=%d hwm_reset=%t ", kb, reset)
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var o outcome
	var reused atomic.Int64
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		if info.Reused {
			reused.Add(1)
		}
	}}
	lat := make([]time.Duration, total)
	var wg sync.WaitGroup
	gate := make(chan struct{})
	var t0 time.Time
	var ready sync.WaitGroup
	ready.Add(total)
	for i := range total {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ready.Done()
			<-gate
			resp, err := get(ctx, client, *url, *header, ids[i / *per], trace)
			o.record(resp, err) // reads the body
			lat[i] = time.Since(t0)
		}()
	}
	ready.Wait() // every goroutine is at the gate
	t0 = time.Now()
	close(gate)
	wg.Wait()
	wall := time.Since(t0)
	if *hwmPID > 0 {
		if kb, err := statusKB(*hwmPID, "VmHWM"); err == nil {
			fmt.Printf("hwm_storm_kb=%d ", kb)
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	fmt.Printf("companies=%d per=%d requests=%d reused_conns=%d wall_ms=%.1f p50_us=%d p99_us=%d p999_us=%d max_us=%d ",
		len(ids), *per, total, reused.Load(), float64(wall.Microseconds())/1000,
		pct(lat, 50).Microseconds(), pct(lat, 99).Microseconds(), pct(lat, 99.9).Microseconds(), lat[len(lat)-1].Microseconds())
	o.print("")
	fmt.Println()
	return nil
}

// pct is the nearest-rank percentile of sorted values.
func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(float64(len(sorted))*p/100+0.999999999) - 1
	return sorted[min(max(rank, 0), len(sorted)-1)]
}

// statusKB reads a "Name: N kB" line of /proc/PID/status.
func statusKB(pid int, name string) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s", pid, name)
}
