package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// fleet sends -rate requests a second for -duration, open loop (each at its due time, not
// waiting for earlier answers; at most -max-inflight at once), each to the next of -urls
// (the replicas, round robin) for a company drawn at random from -ids and -long-ids. It writes
// one line a second to -series: the second's start (Unix ms), requests due in it, their p99
// latency in ms, and how many answered 503. It prints the totals, among them "cached_503":
// 503 answers for a company of -long-ids (tokens valid far longer than the run, never
// refreshed) that the same replica had already answered 200 for, so a 503 for a company
// whose unexpired token was cached.
func fleet(args []string) error {
	fs := flag.NewFlagSet("fleet", flag.ContinueOnError)
	urls := fs.String("urls", "", "replica request URLs, comma separated")
	idsPath := fs.String("ids", "", "company ids, one a line")
	longPath := fs.String("long-ids", "", "company ids whose tokens outlive the run, one a line")
	rate := fs.Float64("rate", 200, "requests per second, all replicas together")
	duration := fs.Duration("duration", 60*time.Second, "how long to send")
	maxInflight := fs.Int("max-inflight", 2000, "bound on requests in flight")
	series := fs.String("series", "", "file for the per-second lines")
	header := fs.String("header", "X-Pleo-Company-Id", "company header")
	if err := fs.Parse(args); err != nil {
		return err
	}
	targets := strings.Split(*urls, ",")
	short, err := readIDs(*idsPath)
	if err != nil {
		return err
	}
	var long []string
	if *longPath != "" {
		if long, err = readIDs(*longPath); err != nil {
			return err
		}
	}
	isLong := make(map[string]bool, len(long))
	for _, id := range long {
		isLong[id] = true
	}
	all := append(slices.Clip(short), long...)
	if len(all) == 0 || *rate <= 0 {
		return errors.New("fleet: no companies or no rate")
	}
	ctx, cancel := context.WithTimeout(context.Background(), *duration+30*time.Second)
	defer cancel()
	client := newClient(*maxInflight, 10*time.Second)

	type result struct {
		due    time.Time
		took   time.Duration
		status int // 0: transport error
		target int
		id     string
	}
	results := make(chan result, 4096)
	type second struct {
		lat           []time.Duration
		n, s503, errs int
	}
	secs := map[int64]*second{}
	served := map[string]bool{} // target/company answered 200 before
	var total, ok, s503, cached503, otherErr, transport int
	var collect sync.WaitGroup
	collect.Go(func() {
		for r := range results {
			k := r.due.Unix()
			s := secs[k]
			if s == nil {
				s = &second{}
				secs[k] = s
			}
			s.n++
			s.lat = append(s.lat, r.took)
			total++
			key := fmt.Sprint(r.target, "/", r.id)
			switch {
			case r.status == 200:
				ok++
				served[key] = true
			case r.status == 503:
				s503++
				s.s503++
				if isLong[r.id] && served[key] {
					cached503++
				}
			case r.status == 0:
				transport++
				s.errs++
			default:
				otherErr++
				s.errs++
			}
		}
	})

	sem := make(chan struct{}, *maxInflight)
	var wg sync.WaitGroup
	interval := time.Duration(float64(time.Second) / *rate)
	start := time.Now()
	dropped := 0
	for i := 0; ; i++ {
		due := start.Add(time.Duration(i) * interval)
		if due.Sub(start) >= *duration || ctx.Err() != nil {
			break
		}
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		select {
		case sem <- struct{}{}:
		default:
			dropped++
			continue
		}
		target := i % len(targets)
		id := all[rand.N(len(all))]
		wg.Go(func() {
			defer func() { <-sem }()
			resp, err := get(ctx, client, targets[target], *header, id, nil)
			status := 0
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				status = resp.StatusCode
			}
			results <- result{due: due, took: time.Since(due), status: status, target: target, id: id}
		})
	}
	wg.Wait()
	close(results)
	collect.Wait()

	if *series != "" {
		f, err := os.Create(*series)
		if err != nil {
			return err
		}
		keys := make([]int64, 0, len(secs))
		for k := range secs {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			s := secs[k]
			slices.Sort(s.lat)
			p99 := s.lat[min(len(s.lat)-1, len(s.lat)*99/100)]
			fmt.Fprintf(f, "%d %d %.1f %d %d\n", k*1000, s.n, float64(p99)/float64(time.Millisecond), s.s503, s.errs)
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	fmt.Printf("requests=%d ok=%d status_503=%d cached_503=%d other_status=%d transport_errors=%d not_sent=%d\n",
		total, ok, s503, cached503, otherErr, transport, dropped)
	return nil
}
