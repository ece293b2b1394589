package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/mockpleo"
)

func header() string {
	return fmt.Sprintf("%8s %7s %6s %6s %6s %10s %8s %5s %7s %21s %s",
		"time", "ok", "unexp", "revkd", "gorout", "rss MiB", "fds", "pend", "ready", "refresh ok/err/grant", "")
}

// row prints a sample with the callers' counts since the previous one.
func row(s sample, ok, unexpected, expected int64) string {
	ready := "200"
	if s.ready != 200 {
		ready = fmt.Sprint(s.ready)
	}
	line := fmt.Sprintf("%8s %7d %6d %6d %6.0f %10.1f %8.0f %5.0f %7s %21s",
		s.at.Round(time.Second), ok, unexpected, expected, s.goroutines, s.rss/(1<<20), s.fds, s.pending, ready,
		fmt.Sprintf("%.0f/%.0f/%.0f", s.refreshes["success"], s.refreshes["error"], s.refreshes["invalid_grant"]))
	if s.readyReason != "" {
		line += "  " + s.readyReason
	}
	return line
}

// report is the run's outcome.
type report struct {
	l    *load
	took time.Duration
}

// print writes the summary and reports whether the run met its targets.
func (r *report) print(w io.Writer, st mockpleo.Stats, sc *sidecar) bool {
	l := r.l
	l.mu.Lock()
	defer l.mu.Unlock()
	ok := true
	fail := func(format string, args ...any) {
		ok = false
		fmt.Fprintf(w, "FAIL: "+format+"\n", args...)
	}

	var sent, good int64
	fmt.Fprintf(w, "\n== summary (%s)\n", r.took.Round(time.Second))
	fmt.Fprintf(w, "%-18s %9s %9s\n", "requests", "sent", "ok")
	for k := range numKinds {
		fmt.Fprintf(w, "%-18s %9d %9d\n", kindNames[k], l.sent[k], l.ok[k])
		sent += l.sent[k]
		good += l.ok[k]
	}
	fmt.Fprintf(w, "%-18s %9d %9d   (%.1f req/s; %d ticks dropped: no caller free)\n", "total", sent, good,
		float64(sent)/r.took.Seconds(), l.dropped.Load())
	fmt.Fprintf(w, "large bodies answered 401 by Pleo (not replayable), 200 on the caller's retry: %d\n", l.largeRetried)

	fmt.Fprintln(w, "\nclient-visible errors, companies not being revoked (target: none):")
	unexpected := printCounts(w, l.unexpected)
	for _, e := range l.examples {
		fmt.Fprintln(w, "  e.g.", e)
	}
	fmt.Fprintf(w, "client-visible errors of companies whose grant was revoked, until reconnected (expected):\n")
	printCounts(w, l.expected)

	fmt.Fprintf(w, "\nrevocations: %d access tokens, %d whole grants (reconnected after", l.accessRevs, l.grantRevs)
	if len(l.reconnects) > 0 {
		d := slices.Clone(l.reconnects)
		slices.Sort(d)
		fmt.Fprintf(w, " %s..%s: 3s revoked, import, pick-up by polling)\n", d[0].Round(100*time.Millisecond), d[len(d)-1].Round(100*time.Millisecond))
	} else {
		fmt.Fprintln(w, " -)")
	}
	for _, n := range l.churnNotes {
		fmt.Fprintln(w, "  note:", n)
	}
	fmt.Fprintf(w, "mock Pleo: %d token calls (%d refreshes), %d reuse detections, %d invalid grants, %d API calls, %d answered 401\n",
		st.TokenCalls, st.RefreshCalls, st.ReuseDetections, st.InvalidGrants, st.APICalls, st.Unauthorized)

	if len(l.samples) >= 2 {
		loaded := l.samples[1:] // the first sample is before any load
		first, last := loaded[0], loaded[len(loaded)-1]
		var maxG, maxR, maxF float64
		notReady := 0
		for _, s := range loaded {
			maxG, maxR, maxF = max(maxG, s.goroutines), max(maxR, s.rss), max(maxF, s.fds)
			if s.ready != 200 {
				notReady++
			}
		}
		idle := l.samples[0]
		fmt.Fprintf(w, "\n%-14s %10s %10s %10s %10s\n", "", "idle", "first", "last", "max")
		fmt.Fprintf(w, "%-14s %10.0f %10.0f %10.0f %10.0f\n", "goroutines", idle.goroutines, first.goroutines, last.goroutines, maxG)
		fmt.Fprintf(w, "%-14s %10.1f %10.1f %10.1f %10.1f\n", "RSS MiB", idle.rss/(1<<20), first.rss/(1<<20), last.rss/(1<<20), maxR/(1<<20))
		fmt.Fprintf(w, "%-14s %10.0f %10.0f %10.0f %10.0f\n", "open fds", idle.fds, first.fds, last.fds, maxF)
		fmt.Fprintf(w, "samples not ready: %d of %d\n", notReady, len(loaded))
		fmt.Fprintf(w, "sidecar token refreshes: %.0f ok, %.0f failed, %.0f invalid_grant; pending writes at the end: %.0f\n",
			last.refreshes["success"], last.refreshes["error"], last.refreshes["invalid_grant"], last.pending)
		if last.pending != 0 {
			fail("%.0f rotated tokens still waiting for their write", last.pending)
		}
	}

	logs := sc.logSummary()
	var lines []string
	for _, k := range slices.Sorted(maps.Keys(logs)) {
		if !strings.HasPrefix(k, "INFO ") {
			lines = append(lines, fmt.Sprintf("  %-80s %d", k, logs[k]))
		}
	}
	fmt.Fprintf(w, "\nsidecar log: %d access lines; warnings and errors:\n", logs["INFO request"])
	if len(lines) == 0 {
		fmt.Fprintln(w, "  none")
	}
	for _, s := range lines {
		fmt.Fprintln(w, s)
	}

	fmt.Fprintln(w)
	if unexpected != 0 {
		fail("%d client-visible errors for companies not being revoked", unexpected)
	}
	for k, n := range l.unexpected {
		if strings.HasPrefix(k, "WRONG COMPANY") {
			fail("%d answers with another company's credential", n)
		}
	}
	if st.ReuseDetections > l.grantRevs || st.InvalidGrants > l.grantRevs {
		fail("%d reuse detections and %d invalid grants for %d grant revocations: a refresh token was presented twice",
			st.ReuseDetections, st.InvalidGrants, l.grantRevs)
	}
	if ok {
		fmt.Fprintln(w, "PASS: no unexpected client-visible error, every answer from the intended company, no refresh token reused")
	}
	return ok
}

// printCounts prints counts a line each, sorted by key ("none" when empty), and returns their sum.
func printCounts(w io.Writer, counts map[string]int64) int64 {
	var sum int64
	for _, k := range slices.Sorted(maps.Keys(counts)) {
		fmt.Fprintf(w, "  %-50s %d\n", k, counts[k])
		sum += counts[k]
	}
	if sum == 0 {
		fmt.Fprintln(w, "  none")
	}
	return sum
}
