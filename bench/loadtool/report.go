package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
)

// The results file bench/run writes: one measurement a line,
// round<TAB>target<TAB>load<TAB>key<TAB>value. Round 0 holds the run's metadata (target
// "meta"), the storm ("storm") and the memory runs ("mem", "memenc").

type runKey struct {
	round        int
	target, load string
}

type results struct {
	runs   map[runKey]map[string]string
	rounds []int
}

func readResults(path string) (*results, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	res := &results{runs: make(map[runKey]map[string]string)}
	seen := map[int]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), "\t", 5)
		if len(parts) != 5 {
			continue
		}
		round, err := strconv.Atoi(parts[0])
		if err != nil {
			return nil, fmt.Errorf("%s: bad round %q", path, parts[0])
		}
		k := runKey{round, parts[1], parts[2]}
		if res.runs[k] == nil {
			res.runs[k] = make(map[string]string)
		}
		res.runs[k][parts[3]] = parts[4]
		if round > 0 && !seen[round] {
			seen[round] = true
			res.rounds = append(res.rounds, round)
		}
	}
	sort.Ints(res.rounds)
	return res, sc.Err()
}

func (r *results) str(round int, target, load, key string) string {
	return r.runs[runKey{round, target, load}][key]
}

func (r *results) num(round int, target, load, key string) (float64, bool) {
	v, err := strconv.ParseFloat(r.str(round, target, load, key), 64)
	return v, err == nil && !math.IsNaN(v) && !math.IsInf(v, 0)
}

func (r *results) meta(key string) string { return r.str(0, "meta", "-", key) }

// metric computes one number of one round of one target, or reports it missing.
type metric func(r *results, round int, target string) (float64, bool)

func field(load, key string, scale float64) metric {
	return func(r *results, round int, target string) (float64, bool) {
		v, ok := r.num(round, target, load, key)
		return v * scale, ok
	}
}

func wrkRPS(r *results, round int, target string) (float64, bool) {
	n, ok1 := r.num(round, target, "wrk", "requests")
	d, ok2 := r.num(round, target, "wrk", "duration_us")
	return n / (d / 1e6), ok1 && ok2 && d > 0
}

// cpuPerRequest is the CPU time (user+system) of the process(es) named by key, in
// microseconds, per request the load generator completed.
func cpuPerRequest(load, key string) metric {
	return func(r *results, round int, target string) (float64, bool) {
		ticks, ok1 := r.num(round, target, load, key)
		n, ok2 := r.num(round, target, load, "requests")
		hz, ok3 := r.num(0, "meta", "-", "clk_tck")
		return ticks * 1e6 / hz / n, ok1 && ok2 && ok3 && n > 0 && hz > 0
	}
}

// added is a metric's excess over the direct run (a) of the same round.
func added(m metric) metric {
	return func(r *results, round int, target string) (float64, bool) {
		v, ok1 := m(r, round, target)
		base, ok2 := m(r, round, "a")
		return v - base, ok1 && ok2
	}
}

// ratio is (d)'s metric over target's, in the same round.
func ratio(num, den metric) metric {
	return func(r *results, round int, target string) (float64, bool) {
		a, ok1 := num(r, round, "d")
		b, ok2 := den(r, round, target)
		return a / b, ok1 && ok2 && b != 0
	}
}

type summary struct {
	med, lo, hi float64
	n           int
}

func (r *results) summarize(m metric, target string) (summary, bool) {
	var vs []float64
	for _, round := range r.rounds {
		if v, ok := m(r, round, target); ok {
			vs = append(vs, v)
		}
	}
	if len(vs) == 0 {
		return summary{}, false
	}
	sort.Float64s(vs)
	med := vs[len(vs)/2]
	if len(vs)%2 == 0 {
		med = (vs[len(vs)/2-1] + vs[len(vs)/2]) / 2
	}
	return summary{med, vs[0], vs[len(vs)-1], len(vs)}, true
}

func formatNum(v float64, decimals int) string {
	return strconv.FormatFloat(v, 'f', decimals, 64)
}

func (s summary) String(decimals int) string {
	out := formatNum(s.med, decimals)
	if s.n > 1 && formatNum(s.lo, decimals) != formatNum(s.hi, decimals) {
		out += " (" + formatNum(s.lo, decimals) + "–" + formatNum(s.hi, decimals) + ")"
	}
	return out
}

// sum adds a key over the rounds.
func (r *results) sum(target, load string, keys ...string) (float64, bool) {
	total, any := 0.0, false
	for _, round := range r.rounds {
		for _, k := range keys {
			if v, ok := r.num(round, target, load, k); ok {
				total += v
				any = true
			}
		}
	}
	return total, any
}

func report(args []string) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	in := fs.String("in", "", "results file written by bench/run")
	if err := fs.Parse(args); err != nil {
		return err
	}
	r, err := readResults(*in)
	if err != nil {
		return err
	}
	if len(r.rounds) == 0 {
		return errors.New("report: no rounds in the results")
	}
	names := map[string]string{
		"a": "(a) direct", "b": "(b) nginx", "c": "(c) plain ReverseProxy", "cp": "(c′) plain ReverseProxy + BufferPool",
		"d": "(d) pleo-auth-proxy", "dl": "(d′) pleo-auth-proxy, access log on",
	}
	var targets []string
	for _, t := range []string{"a", "b", "c", "cp", "d", "dl"} {
		if _, ok := r.runs[runKey{r.rounds[0], t, "wrk"}]; ok {
			targets = append(targets, t)
		}
	}
	has := func(t string) bool { return contains(targets, t) }
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }

	rate, dur := r.meta("rate"), r.meta("duration")
	p("## pleo-auth-proxy performance comparison\n\n")
	if len(targets) > 0 {
		p("- run: %s, %s round(s) interleaved (%s per round), medians over rounds, (min–max) when they differ\n",
			r.meta("started"), r.meta("rounds"), strings.Join(targets, ","))
	} else {
		p("- run: %s, the h2c round alone (`H2C_ONLY=1`): no HTTP/1.1 rounds, no storm, no memory run\n", r.meta("started"))
	}
	p("- machine: %s CPUs, %s; GOMAXPROCS %s; nginx worker_processes %s (%s workers); nothing pinned\n",
		r.meta("cpus"), r.meta("kernel"), r.meta("gomaxprocs"), r.meta("nginx_worker_processes"), r.meta("nginx_workers"))
	if v := r.meta("sidecar_runtime"); v != "" {
		p("- **experiment**: the sidecars ran with %s (not the production default)\n", v)
	}
	p("- load average (1/5/15 min): at start %s; before the rounds %s; at the end %s\n",
		r.meta("load_start"), r.meta("load_rounds"), r.meta("load_end"))
	p("- versions: %s; %s; %s; vegeta %s; sidecar %s\n", r.meta("go"), r.meta("nginx"), r.meta("wrk"), r.meta("vegeta"), r.meta("commit"))
	if len(targets) == 0 { // H2C_ONLY=1: the h2c round alone
		p("\n")
		h2cReport(p, r)
		return nil
	}
	p("- saturation: `wrk -t%s -c%s -d%s` with bench/companies.lua (every target gets the same requests: `GET /v1/bench`, `X-Pleo-Company-Id` rotating over %s companies); latency from send (closed loop)\n",
		r.meta("wrk_threads"), r.meta("wrk_connections"), dur, r.meta("companies"))
	p("- fixed rate: `vegeta attack -rate=%s/s -duration=%s` over the same %s requests (open loop); latency counted from when each request was due (see bench/README.md)\n",
		rate, dur, r.meta("companies"))
	p("- (d): file store with %s oauth2 credentials (+%s expired ones for the storm), access tokens valid 1 h, warmed before the rounds; `PLEO_PROXY_LOG_LEVEL=warn` (access log off)%s\n",
		r.meta("companies"), r.meta("storm_companies"),
		map[bool]string{true: "; (d′) is the same with `LOG_LEVEL=info` (one access line per request, text, to a file)", false: ""}[has("dl")])
	p("- (c) is a plain `httputil.ReverseProxy` (no BufferPool: 32 KiB allocated per response copy) with the sidecar's transport and server limits%s\n",
		map[bool]string{true: "; (c′) is the same with a BufferPool like the sidecar's", false: ""}[has("cp")])
	p("\n")

	// The table.
	header := []string{"measurement"}
	for _, t := range targets {
		header = append(header, names[t])
	}
	p("| %s |\n|%s\n", strings.Join(header, " | "), strings.Repeat(" --- |", len(header)))
	row := func(label string, cell func(t string) string) {
		cells := []string{label}
		for _, t := range targets {
			c := cell(t)
			if c == "" {
				c = "—"
			}
			cells = append(cells, c)
		}
		p("| %s |\n", strings.Join(cells, " | "))
	}
	stat := func(m metric, decimals int, only ...string) func(t string) string {
		return func(t string) string {
			if len(only) > 0 && !contains(only, t) {
				return ""
			}
			s, ok := r.summarize(m, t)
			if !ok {
				return ""
			}
			return s.String(decimals)
		}
	}
	errCell := func(load string, errKeys ...string) func(t string) string {
		return func(t string) string {
			e, _ := r.sum(t, load, errKeys...)
			n, _ := r.sum(t, load, "non2xx")
			tot, _ := r.sum(t, load, "requests")
			return fmt.Sprintf("%.0f / %.0f of %.0f", e, n, tot)
		}
	}
	proxies := []string{"b", "c", "cp", "d", "dl"}
	sidecars := []string{"d", "dl"}
	const wrkL, rateL = "wrk", "rate"

	section := func(title string) { row("**"+title+"**", func(string) string { return " " }) }
	section("saturation (wrk)")
	row("requests/s", stat(wrkRPS, 0))
	row("p50 latency, ms", stat(field(wrkL, "p50_us", 1e-3), 3))
	row("p99 latency, ms", stat(field(wrkL, "p99_us", 1e-3), 3))
	row("p99.9 latency, ms", stat(field(wrkL, "p999_us", 1e-3), 3))
	row("proxy CPU per request, µs (user+sys)", stat(cpuPerRequest(wrkL, "cpu_ticks"), 1, proxies...))
	row("upstream CPU per request, µs", stat(cpuPerRequest(wrkL, "up_ticks"), 1))
	row("errors / non-2xx, all rounds", errCell(wrkL, "errors"))
	section(fmt.Sprintf("fixed rate (vegeta %s/s)", rate))
	row("achieved requests/s", stat(field(rateL, "achieved_rps", 1), 1))
	row("p50 latency from due, ms", stat(field(rateL, "p50_us", 1e-3), 3))
	row("p99 latency from due, ms", stat(field(rateL, "p99_us", 1e-3), 3))
	row("p99.9 latency from due, ms", stat(field(rateL, "p999_us", 1e-3), 3))
	row("p99 / p99.9 as vegeta reports (from send), ms", func(t string) string {
		a, ok1 := r.summarize(field(rateL, "native_p99_us", 1e-3), t)
		b, ok2 := r.summarize(field(rateL, "native_p999_us", 1e-3), t)
		if !ok1 || !ok2 {
			return ""
		}
		return formatNum(a.med, 3) + " / " + formatNum(b.med, 3)
	})
	row("largest send delay behind schedule, ms", stat(field(rateL, "max_lag_us", 1e-3), 3))
	row("added p99 over (a), ms", stat(added(field(rateL, "p99_us", 1e-3)), 3, proxies...))
	row("added p99.9 over (a), ms", stat(added(field(rateL, "p999_us", 1e-3)), 3, proxies...))
	row("proxy CPU per request, µs (user+sys)", stat(cpuPerRequest(rateL, "cpu_ticks"), 1, proxies...))
	row("upstream CPU per request, µs", stat(cpuPerRequest(rateL, "up_ticks"), 1))
	row("errors / non-2xx, all rounds", errCell(rateL, "errors"))
	section("ratios: (d) over this column, per round, median")
	// cpuRatio is (d)'s CPU per request over the column's under load; for (a), which has no
	// proxy, over the upstream's own.
	cpuRatio := func(load string) func(t string) string {
		return func(t string) string {
			switch t {
			case "a":
				return stat(ratio(cpuPerRequest(load, "cpu_ticks"), cpuPerRequest(load, "up_ticks")), 2)(t)
			case "b", "c", "cp":
				return stat(ratio(cpuPerRequest(load, "cpu_ticks"), cpuPerRequest(load, "cpu_ticks")), 2)(t)
			}
			return ""
		}
	}
	row("CPU per request, saturation (for (a): over the upstream's own CPU)", cpuRatio(wrkL))
	row("CPU per request, fixed rate (for (a): over the upstream's own CPU)", cpuRatio(rateL))
	row("added p99 over (a), fixed rate", stat(ratio(added(field(rateL, "p99_us", 1)), added(field(rateL, "p99_us", 1))), 2, "b", "c", "cp"))
	row("p99 from due, fixed rate", stat(ratio(field(rateL, "p99_us", 1), field(rateL, "p99_us", 1)), 2, "a", "b", "c", "cp"))
	row("requests/s, saturation", stat(ratio(wrkRPS, wrkRPS), 2, "a", "b", "c", "cp"))

	one := func(target, key string, f func(float64) string) func(t string) string {
		return func(t string) string {
			if t != "d" {
				return ""
			}
			v, ok := r.num(0, target, "-", key)
			if !ok {
				return "missing"
			}
			return f(v)
		}
	}
	mib := func(kb float64) string { return formatNum(kb/1024, 1) + " MiB" }
	count := func(v float64) string { return formatNum(v, 0) }
	st := func(k string) string { return r.str(0, "storm", "-", k) }
	section(fmt.Sprintf("(e) refresh storm: %s companies with expired tokens × %s concurrent requests, released at once", st("companies"), st("per")))
	row("token endpoint calls (refresh grants) during the storm", func(t string) string {
		if t != "d" {
			return ""
		}
		return st("token_calls") + " (" + st("refresh_calls") + "), invalid_grant " + st("invalid_grants")
	})
	row("token endpoint calls during the load rounds (expected 0)", func(t string) string {
		if !contains(sidecars, t) {
			return ""
		}
		return r.meta("token_calls_rounds")
	})
	row("storm answers: ok / non-2xx / errors", func(t string) string {
		if t != "d" {
			return ""
		}
		return st("ok") + " / " + st("non2xx") + " / " + st("errors") + " (" + st("statuses") + ")"
	})
	row("storm latency p50 / p99 / max, ms", func(t string) string {
		if t != "d" {
			return ""
		}
		f := func(k string) string { v, _ := r.num(0, "storm", "-", k); return formatNum(v/1000, 1) }
		return f("p50_us") + " / " + f("p99_us") + " / " + f("max_us")
	})
	row("storm requests on pre-opened connections", one("storm", "reused_conns", count))
	row("peak RSS (VmHWM) from start through the load rounds", func(t string) string {
		if !contains(sidecars, t) {
			return ""
		}
		v, ok := r.num(0, "storm", "-", "hwm_before_kb_"+t)
		if !ok {
			return ""
		}
		return mib(v)
	})
	row(fmt.Sprintf("peak RSS (VmHWM) after pre-opening the storm's %s connections (%s concurrent warm requests)", st("requests"), st("requests")), one("storm", "hwm_prewarm_kb", mib))
	row("peak RSS (VmHWM) during the storm itself (peak reset after pre-opening)", one("storm", "hwm_after_kb", mib))
	row("RSS (VmRSS) 2 s after the storm", one("storm", "rss_after_kb", mib))
	for _, m := range memRuns {
		if _, ok := r.num(0, m.load, "-", "startup_ms"); !ok && m.load != "mem" {
			continue
		}
		mm := func(k string) string { return r.str(0, m.load, "-", k) }
		section(fmt.Sprintf("%s memory: %s stored credentials (%s), CACHE_SIZE %s", m.label, mm("credentials"), m.store, mm("cache_size")))
		row("start-up, exec to /readyz 200", one(m.load, "startup_ms", func(v float64) string { return formatNum(v, 0) + " ms" }))
		row("RSS after start (VmRSS at ready)", one(m.load, "rss_start_kb", mib))
		row(fmt.Sprintf("RSS after touching %s companies", mm("touched")), one(m.load, "rss_touch_kb", mib))
		row("peak RSS (VmHWM) over the memory run", one(m.load, "hwm_touch_kb", mib))
		row("touch answers: ok / non-2xx / errors", func(t string) string {
			if t != "d" {
				return ""
			}
			return mm("ok") + " / " + mm("non2xx") + " / " + mm("errors")
		})
	}

	// Targets.
	p("\n### Targets\n\n| target | measured | limit | result |\n| --- | --- | --- | --- |\n")
	verdict := func(pass bool, valid bool) string {
		switch {
		case !valid:
			return "FAIL (not measured or errors)"
		case pass:
			return "PASS"
		}
		return "FAIL"
	}
	noErrors := func(ts ...string) bool {
		for _, t := range ts {
			for _, l := range []string{wrkL, rateL} {
				if e, _ := r.sum(t, l, "errors", "non2xx"); e > 0 {
					return false
				}
			}
		}
		return true
	}
	for _, l := range []struct{ load, name string }{{wrkL, "saturation"}, {rateL, "fixed " + rate + " req/s"}} {
		d, ok1 := r.summarize(cpuPerRequest(l.load, "cpu_ticks"), "d")
		c, ok2 := r.summarize(cpuPerRequest(l.load, "cpu_ticks"), "c")
		p("| CPU per proxied request ≤ plain ReverseProxy's (%s) | %s µs vs %s µs | ≤ 1.00× | %s |\n",
			l.name, formatNum(d.med, 1), formatNum(c.med, 1), verdict(d.med <= c.med, ok1 && ok2 && noErrors("c", "d")))
	}
	ap, ok := r.summarize(added(field(rateL, "p99_us", 1e-3)), "d")
	p("| added p99 over direct at fixed %s req/s | %s ms | ≤ 1 ms | %s |\n", rate, formatNum(ap.med, 3), verdict(ap.med <= 1, ok && noErrors("a", "d")))
	calls, ok1 := r.num(0, "storm", "-", "token_calls")
	refreshes, ok2 := r.num(0, "storm", "-", "refresh_calls")
	n, ok3 := r.num(0, "storm", "-", "companies")
	stOK, ok4 := r.num(0, "storm", "-", "ok")
	stReq, ok5 := r.num(0, "storm", "-", "requests")
	p("| storm: exactly one token call per company | %s calls for %s companies; %s of %s answered 2xx | = %s | %s |\n",
		count(calls), count(n), count(stOK), count(stReq), count(n),
		verdict(calls == n && refreshes == n && stOK == stReq, ok1 && ok2 && ok3 && ok4 && ok5))
	hwm, ok := 0.0, true
	for _, k := range []string{"hwm_before_kb_d", "hwm_prewarm_kb", "hwm_after_kb"} {
		v, found := r.num(0, "storm", "-", k)
		if k != "hwm_prewarm_kb" && !found {
			ok = false
		}
		hwm = max(hwm, v)
	}
	p("| peak RSS ≤ 64 MiB throughout, storm included (largest VmHWM of (d) above) | %s | ≤ 64 MiB | %s |\n", mib(hwm), verdict(hwm <= 64*1024, ok))
	for _, m := range memRuns {
		su, ok := r.num(0, m.load, "-", "startup_ms")
		if !ok && m.load != "mem" {
			continue
		}
		mm := func(k string) string { return r.str(0, m.load, "-", k) }
		mhwm, hok := r.num(0, m.load, "-", "hwm_touch_kb")
		mOK, _ := r.num(0, m.load, "-", "ok")
		mN, _ := r.num(0, m.load, "-", "touched")
		p("| %s %s credentials (%s), CACHE_SIZE %s: RSS ≤ 64 MiB (VmHWM from exec through touching %s) | %s | ≤ 64 MiB | %s |\n",
			m.label, mm("credentials"), m.store, mm("cache_size"), mm("touched"), mib(mhwm), verdict(mhwm <= 64*1024, hok && mOK == mN))
		p("| %s %s credentials (%s): start-up ≤ 1 s (exec to /readyz 200) | %s ms | ≤ 1000 ms | %s |\n", m.label, mm("credentials"), m.store, formatNum(su, 0), verdict(su <= 1000, ok))
	}
	h2cReport(p, r)
	return nil
}

// h2cReport prints the table of the HTTP/2 cleartext round (load "h2"), when it ran. It is
// informational: no targets.
func h2cReport(p func(string, ...any), r *results) {
	names := map[string]string{"a": "(a) direct", "c": "(c) plain ReverseProxy", "d": "(d) pleo-auth-proxy"}
	var targets []string
	for _, t := range []string{"a", "c", "d"} {
		if _, ok := r.runs[runKey{r.rounds[0], t, "h2"}]; ok {
			targets = append(targets, t)
		}
	}
	if len(targets) == 0 {
		return
	}
	const h2L = "h2"
	p("\n### HTTP/2 cleartext (prior knowledge)\n\n")
	p("`h2load -t%s -c%s -m%s -D %s` (%s, h2c with prior knowledge: %s connections × %s concurrent streams), `GET /v1/bench` with `X-Pleo-Company-Id` of one warm company; %s round(s) of a, c, d (after the HTTP/1.1 rounds, if they ran), medians over rounds. Latency from send (closed loop), from h2load's per-request log. The proxies speak HTTP/1.1 to the upstream. Informational: no targets.\n\n",
		r.meta("h2c_threads"), r.meta("h2c_clients"), r.meta("h2c_streams"), r.meta("duration"), r.meta("h2load"),
		r.meta("h2c_clients"), r.meta("h2c_streams"), r.meta("rounds"))
	header := []string{"measurement"}
	for _, t := range targets {
		header = append(header, names[t])
	}
	p("| %s |\n|%s\n", strings.Join(header, " | "), strings.Repeat(" --- |", len(header)))
	row := func(label string, m metric, decimals int, only ...string) {
		cells := []string{label}
		for _, t := range targets {
			c := "—"
			if s, ok := r.summarize(m, t); ok && (len(only) == 0 || contains(only, t)) {
				c = s.String(decimals)
			}
			cells = append(cells, c)
		}
		p("| %s |\n", strings.Join(cells, " | "))
	}
	rps := func(r *results, round int, target string) (float64, bool) {
		n, ok1 := r.num(round, target, h2L, "requests")
		d, ok2 := r.num(round, target, h2L, "duration_us")
		return n / (d / 1e6), ok1 && ok2 && d > 0
	}
	row("requests/s", rps, 0)
	row("mean latency, ms", field(h2L, "mean_us", 1e-3), 3)
	row("p50 latency, ms", field(h2L, "p50_us", 1e-3), 3)
	row("p99 latency, ms", field(h2L, "p99_us", 1e-3), 3)
	row("p99.9 latency, ms", field(h2L, "p999_us", 1e-3), 3)
	row("max latency, ms", field(h2L, "max_us", 1e-3), 3)
	row("proxy CPU per request, µs (user+sys)", cpuPerRequest(h2L, "cpu_ticks"), 1, "c", "d")
	row("upstream CPU per request, µs", cpuPerRequest(h2L, "up_ticks"), 1)
	row("(d)'s CPU per request over this column's (for (a): over the upstream's own)", func(r *results, round int, target string) (float64, bool) {
		key := "cpu_ticks"
		if target == "a" {
			key = "up_ticks"
		}
		return ratio(cpuPerRequest(h2L, "cpu_ticks"), cpuPerRequest(h2L, key))(r, round, target)
	}, 2, "a", "c")
	cells := []string{"errors / non-2xx, all rounds"}
	for _, t := range targets {
		e, _ := r.sum(t, h2L, "errors")
		n, _ := r.sum(t, h2L, "non2xx")
		tot, _ := r.sum(t, h2L, "requests")
		cells = append(cells, fmt.Sprintf("%.0f / %.0f of %.0f", e, n, tot))
	}
	p("| %s |\n", strings.Join(cells, " | "))
}

// memRuns are the memory runs bench/run records, (f) always and (f′) with MEM_ENCRYPTED=1.
var memRuns = []struct{ load, label, store string }{
	{"mem", "(f)", "file store"},
	{"memenc", "(f′)", "file store, encrypted at rest"},
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
