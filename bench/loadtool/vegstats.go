package main

import (
	"encoding/csv"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"time"
)

// vegstats reads the CSV of `vegeta encode --to csv` and prints the counts and latency
// percentiles, both as vegeta measures them and counted from when each request was due.
//
// vegeta (v12) stamps a result when a worker starts the request, not when the pacer meant it
// to start: a pacer or worker that falls behind (a CPU-starved load generator) hides that
// delay. The constant pacer means the request with sequence number n to be due at
// begin + n/rate; begin is estimated as the earliest (timestamp - n/rate), i.e. assuming the
// request that was least late was on time. Latency from due = (timestamp - due) + latency.
func vegstats(args []string) error {
	fs := flag.NewFlagSet("vegstats", flag.ContinueOnError)
	rate := fs.Float64("rate", 1000, "the attack's rate, requests per second")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *rate <= 0 {
		return errors.New("vegstats: -rate must be positive")
	}
	interval := float64(time.Second) / *rate

	type hit struct {
		ts, lat int64
		seq     uint64
	}
	var hits []hit
	var ok, non2xx, errs int
	r := csv.NewReader(os.Stdin)
	r.FieldsPerRecord = 12
	r.ReuseRecord = true
	for {
		rec, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("vegstats: %w", err)
		}
		ts, err1 := strconv.ParseInt(rec[0], 10, 64)
		code, err2 := strconv.Atoi(rec[1])
		lat, err3 := strconv.ParseInt(rec[2], 10, 64)
		seq, err4 := strconv.ParseUint(rec[8], 10, 64)
		if err := errors.Join(err1, err2, err3, err4); err != nil {
			return fmt.Errorf("vegstats: %w", err)
		}
		switch {
		case rec[5] != "" || code == 0:
			errs++
		case code/100 == 2:
			ok++
		default:
			non2xx++
		}
		hits = append(hits, hit{ts, lat, seq})
	}
	if len(hits) == 0 {
		return errors.New("vegstats: no results")
	}
	begin := int64(1<<63 - 1)
	first, last := hits[0].ts, hits[0].ts
	for _, h := range hits {
		begin = min(begin, h.ts-int64(float64(h.seq)*interval))
		first, last = min(first, h.ts), max(last, h.ts)
	}
	native := make([]time.Duration, len(hits))
	fromDue := make([]time.Duration, len(hits))
	var maxLag int64
	for i, h := range hits {
		lag := h.ts - (begin + int64(float64(h.seq)*interval))
		maxLag = max(maxLag, lag)
		native[i] = time.Duration(h.lat)
		fromDue[i] = time.Duration(h.lat + lag)
	}
	sort.Slice(native, func(i, j int) bool { return native[i] < native[j] })
	sort.Slice(fromDue, func(i, j int) bool { return fromDue[i] < fromDue[j] })
	span := float64(last-first)/float64(time.Second) + interval/float64(time.Second)
	us := func(d time.Duration) int64 { return d.Microseconds() }
	fmt.Printf("requests=%d ok=%d non2xx=%d errors=%d achieved_rps=%.1f p50_us=%d p99_us=%d p999_us=%d max_us=%d native_p50_us=%d native_p99_us=%d native_p999_us=%d max_lag_us=%d\n",
		len(hits), ok, non2xx, errs, float64(len(hits))/span,
		us(pct(fromDue, 50)), us(pct(fromDue, 99)), us(pct(fromDue, 99.9)), us(fromDue[len(fromDue)-1]),
		us(pct(native, 50)), us(pct(native, 99)), us(pct(native, 99.9)), maxLag/1000)
	return nil
}
