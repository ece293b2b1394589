package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// h2load's summary lines (nghttp2 1.52):
//
//	finished in 2.01s, 21061.50 req/s, 2.03MB/s
//	requests: 42123 total, 42187 started, 42123 done, 42123 succeeded, 0 failed, 0 errored, 0 timeout
//	status codes: 42155 2xx, 0 3xx, 0 4xx, 0 5xx
var (
	h2Finished = regexp.MustCompile(`^finished in ([0-9.]+)(us|ms|s),`)
	h2Requests = regexp.MustCompile(`^requests: \d+ total, \d+ started, (\d+) done, \d+ succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`)
	h2Statuses = regexp.MustCompile(`^status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx`)
)

// h2stats reads h2load's output on standard input (which must say it spoke h2c) and its per-request log (-log, the file of
// h2load --log-file: start time, status, microseconds to the end of the response) and prints
// one line of key=value pairs in the keys the report reads: requests (done), duration_us,
// errors (failed), non2xx (3xx–5xx), timeouts, and latency percentiles from the log.
func h2stats(args []string) error {
	fs := flag.NewFlagSet("h2stats", flag.ContinueOnError)
	logPath := fs.String("log", "", "h2load's --log-file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	out := map[string]int64{}
	proto := ""
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "Application protocol: "); ok {
			proto = p
		}
		if m := h2Finished.FindStringSubmatch(line); m != nil {
			v, err := strconv.ParseFloat(m[1], 64)
			if err != nil {
				return fmt.Errorf("h2stats: %q: %w", line, err)
			}
			unit := map[string]float64{"us": 1, "ms": 1e3, "s": 1e6}[m[2]]
			out["duration_us"] = int64(v * unit)
		}
		if m := h2Requests.FindStringSubmatch(line); m != nil {
			for i, k := range []string{"requests", "errors", "errored", "timeouts"} {
				out[k], _ = strconv.ParseInt(m[i+1], 10, 64)
			}
		}
		if m := h2Statuses.FindStringSubmatch(line); m != nil {
			for _, s := range m[1:] {
				n, _ := strconv.ParseInt(s, 10, 64)
				out["non2xx"] += n
			}
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if proto != "h2c" {
		return fmt.Errorf("h2stats: h2load spoke %q, not h2c", proto)
	}
	if out["duration_us"] == 0 || out["requests"] == 0 {
		return errors.New("h2stats: no \"finished in\" or \"requests:\" line with requests done in h2load's output")
	}
	lats, err := readH2Log(*logPath)
	if err != nil {
		return err
	}
	if len(lats) == 0 {
		return errors.New("h2stats: the log is empty")
	}
	slices.Sort(lats)
	var sum time.Duration
	for _, l := range lats {
		sum += l
	}
	us := func(d time.Duration) int64 { return d.Microseconds() }
	fmt.Printf("requests=%d duration_us=%d errors=%d errored=%d timeouts=%d non2xx=%d logged=%d mean_us=%d p50_us=%d p99_us=%d p999_us=%d max_us=%d\n",
		out["requests"], out["duration_us"], out["errors"], out["errored"], out["timeouts"], out["non2xx"], len(lats),
		us(sum/time.Duration(len(lats))), us(pct(lats, 50)), us(pct(lats, 99)), us(pct(lats, 99.9)), us(lats[len(lats)-1]))
	return nil
}

// readH2Log reads the third column (microseconds) of h2load's --log-file.
func readH2Log(path string) ([]time.Duration, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("h2stats: %w", err)
	}
	defer f.Close()
	var lats []time.Duration
	r := bufio.NewReader(f)
	for {
		line, err := r.ReadString('\n')
		if line = strings.TrimSpace(line); line != "" {
			cols := strings.Split(line, "\t")
			if len(cols) < 3 {
				return nil, fmt.Errorf("h2stats: %s: bad line %q", path, line)
			}
			v, perr := strconv.ParseInt(cols[2], 10, 64)
			if perr != nil {
				return nil, fmt.Errorf("h2stats: %s: %w", path, perr)
			}
			lats = append(lats, time.Duration(v)*time.Microsecond)
		}
		if err == io.EOF {
			return lats, nil
		}
		if err != nil {
			return nil, fmt.Errorf("h2stats: %s: %w", path, err)
		}
	}
}
