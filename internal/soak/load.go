package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/mockpleo"
)

// kind is one kind of request of the mix.
type kind int

const (
	kindGet    kind = iota // small GET, company by header
	kindPost               // 2 KiB POST, replayable
	kindLarge              // POST over MAX_REPLAY_BYTES: streamed, not replayed
	kindStream             // 10 chunks over about a second
	kindTenant             // small GET, company by tenant header
	numKinds
)

var kindNames = [numKinds]string{"get", "post 2KiB", "post >max_replay", "stream 1s", "get by tenant"}

// kindWeights are the mix, in percent.
var kindWeights = [numKinds]int{64, 14, 6, 6, 10}

// window is a time during which a company's grant was revoked: from the revocation until its
// first success after the reconnect.
type window struct{ start, end time.Time } // end zero: still revoked

// load drives the sidecar and keeps the counts.
type load struct {
	o      options
	sc     *sidecar
	mock   *mockpleo.Server
	fleet  *fleet
	client *http.Client
	large  []byte // random bytes the large bodies are cut from
	start  time.Time

	mu           sync.Mutex
	sent, ok     [numKinds]int64
	unexpected   map[string]int64 // error class → count, for companies not being revoked
	expected     map[string]int64 // errors of a company while its grant was revoked
	examples     []string         // the first unexpected errors, for the report
	largeRetried int64            // large bodies answered 401 by Pleo, then 200 on the caller's retry
	windows      map[string][]window
	reconnects   []time.Duration // revocation → first success after the reconnect
	churnNotes   []string        // grant revocations that did not go as planned
	accessRevs   int64
	grantRevs    int64
	samples      []sample

	dropped    atomic.Int64 // ticks no caller was free for
	intervalOK atomic.Int64
	intervalUn atomic.Int64
	intervalEx atomic.Int64
}

func newLoad(o options, sc *sidecar, mock *mockpleo.Server, f *fleet) *load {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConnsPerHost: o.workers * 2,
		IdleConnTimeout:     60 * time.Second,
	}
	large := make([]byte, 2*o.maxReplay+1024)
	_, _ = rand.Read(large)
	return &load{
		o: o, sc: sc, mock: mock, fleet: f, large: large,
		client:     &http.Client{Transport: tr, Timeout: 30 * time.Second},
		unexpected: map[string]int64{},
		expected:   map[string]int64{},
		windows:    map[string][]window{},
	}
}

// run applies the load for the duration and returns the report.
func (l *load) run(ctx context.Context) *report {
	l.start = time.Now()
	ctx, cancel := context.WithTimeout(ctx, l.o.duration)
	defer cancel()
	var wg sync.WaitGroup

	ticks := make(chan struct{}, l.o.workers)
	wg.Go(func() {
		t := time.NewTicker(time.Second / time.Duration(l.o.rps))
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				close(ticks)
				return
			case <-t.C:
				select {
				case ticks <- struct{}{}:
				default:
					l.dropped.Add(1)
				}
			}
		}
	})
	for w := range l.o.workers {
		wg.Go(func() {
			rng := mrand.New(mrand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			// Requests in flight at the end finish (bounded by the client's timeout): the
			// end of the run is not an error of the sidecar.
			reqCtx := context.WithoutCancel(ctx)
			for range ticks {
				c := l.fleet.companies[rng.IntN(len(l.fleet.companies))]
				l.one(reqCtx, rng, c, pickKind(rng))
			}
		})
	}
	var churns sync.WaitGroup
	wg.Go(func() { l.chaos(ctx, &churns) })

	fmt.Println(header())
	l.takeSample(0)
	sampler := time.NewTicker(l.o.sample)
	defer sampler.Stop()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-sampler.C:
			if !l.sc.alive() {
				fmt.Println("soak: the sidecar exited during the run")
				cancel()
				break loop
			}
			l.takeSample(time.Since(l.start))
		}
	}
	churns.Wait()
	wg.Wait()
	l.takeSample(time.Since(l.start))
	return &report{l: l, took: time.Since(l.start)}
}

func pickKind(rng *mrand.Rand) kind {
	n := rng.IntN(100)
	for k, w := range kindWeights {
		if n < w {
			return kind(k)
		}
		n -= w
	}
	return kindGet
}

func (l *load) takeSample(at time.Duration) {
	if !l.sc.alive() {
		return
	}
	s, err := l.sc.read(at)
	if err != nil {
		fmt.Printf("soak: sampling failed: %v\n", err)
		return
	}
	l.mu.Lock()
	l.samples = append(l.samples, s)
	l.mu.Unlock()
	fmt.Println(row(s, l.intervalOK.Swap(0), l.intervalUn.Swap(0), l.intervalEx.Swap(0)))
}

// one sends a request of kind k for c and records its outcome.
func (l *load) one(ctx context.Context, rng *mrand.Rand, c company, k kind) {
	if k == kindTenant && c.tenant == "" {
		k = kindGet
	}
	sent := time.Now()
	class := l.attempt(ctx, rng, c, k)
	done := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sent[k]++
	switch {
	case class == "":
		l.ok[k]++
		l.intervalOK.Add(1)
	case l.revokedLocked(c.id, sent, done):
		l.expected[class]++
		l.intervalEx.Add(1)
	default:
		l.unexpected[class]++
		l.intervalUn.Add(1)
		if len(l.examples) < 10 {
			l.examples = append(l.examples, fmt.Sprintf("%s %s company %s at %s: %s", sent.Format("15:04:05.000"), kindNames[k], c.id, done.Sub(l.start).Round(time.Millisecond), class))
		}
	}
}

// revokedLocked reports whether [sent, done] overlaps a window in which the company's grant was
// revoked.
func (l *load) revokedLocked(id string, sent, done time.Time) bool {
	for _, w := range l.windows[id] {
		if !done.Before(w.start) && (w.end.IsZero() || !sent.After(w.end)) {
			return true
		}
	}
	return false
}

// attempt returns "" on a correct answer, else the error class.
func (l *load) attempt(ctx context.Context, rng *mrand.Rand, c company, k kind) string {
	var (
		method = http.MethodGet
		path   = "/v1/soak/items?page=" + strconv.Itoa(rng.IntN(100))
		body   []byte
	)
	switch k {
	case kindPost:
		method, path = http.MethodPost, "/v1/soak/items"
		body = make([]byte, 2048)
		for i := range body {
			body[i] = 'a' + byte(rng.IntN(26))
		}
	case kindLarge:
		method, path = http.MethodPost, "/v1/soak/uploads"
		n := l.o.maxReplay + 1 + rng.IntN(l.o.maxReplay)
		off := rng.IntN(len(l.large) - n)
		body = l.large[off : off+n]
	case kindStream:
		path = "/v1/mock/stream?chunks=10&interval=100ms"
	}
	for try := 0; ; try++ {
		class, retry := l.send(ctx, c, k, method, path, body)
		if retry && try == 0 {
			// Pleo's 401 to a body the sidecar could not replay: the caller retries once (the
			// sidecar refreshed meanwhile).
			continue
		}
		if class == "" && try == 1 {
			l.mu.Lock()
			l.largeRetried++
			l.mu.Unlock()
		}
		return class
	}
}

// send makes one request; retry says it was Pleo's own 401 to a body over the replay limit.
func (l *load) send(ctx context.Context, c company, k kind, method, path string, body []byte) (class string, retry bool) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+l.sc.data+path, rd)
	if err != nil {
		return "build: " + err.Error(), false
	}
	if k == kindTenant {
		req.Header.Set("X-Tenant-Id", c.tenant)
	} else {
		req.Header.Set("X-Pleo-Company-Id", c.id)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	resp, err := l.client.Do(req)
	if err != nil {
		return "transport: " + shortErr(err), false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if strings.HasPrefix(resp.Header.Get("Proxy-Status"), "pleo-auth-proxy") {
			var p struct {
				Code string `json:"code"`
			}
			_ = json.Unmarshal(b, &p)
			return fmt.Sprintf("%d %s (sidecar)", resp.StatusCode, p.Code), false
		}
		return fmt.Sprintf("%d from Pleo", resp.StatusCode), k == kindLarge && resp.StatusCode == http.StatusUnauthorized
	}
	if k == kindStream {
		return l.checkStream(resp.Body, c), false
	}
	var echo mockpleo.Echo
	if err := json.NewDecoder(resp.Body).Decode(&echo); err != nil {
		return "bad echo: " + shortErr(err), false
	}
	if echo.CompanyID != c.id {
		return "WRONG COMPANY: answered with " + echo.CompanyID + "'s credential", false
	}
	if body != nil {
		sum := sha256.Sum256(body)
		if echo.BodyLength != int64(len(body)) || echo.BodySHA256 != hex.EncodeToString(sum[:]) {
			return "body altered", false
		}
	}
	return "", false
}

func (l *load) checkStream(r io.Reader, c company) string {
	sc := bufio.NewScanner(r)
	n := 0
	for sc.Scan() {
		var chunk struct {
			Chunk     int    `json:"chunk"`
			CompanyID string `json:"company_id"`
		}
		if err := json.Unmarshal(sc.Bytes(), &chunk); err != nil {
			return "bad stream chunk"
		}
		if chunk.CompanyID != c.id {
			return "WRONG COMPANY: stream of " + chunk.CompanyID
		}
		n++
	}
	if err := sc.Err(); err != nil {
		return "stream broken: " + shortErr(err)
	}
	if n != 10 {
		return fmt.Sprintf("stream of %d chunks, want 10", n)
	}
	return ""
}

func shortErr(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "unexpected EOF"
	}
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	return s
}

// chaos revokes access tokens and whole grants at the mock until ctx ends.
func (l *load) chaos(ctx context.Context, churns *sync.WaitGroup) {
	access := time.NewTicker(l.o.revokeEvery)
	defer access.Stop()
	var grant <-chan time.Time
	if l.o.grantRevokeEvery > 0 {
		t := time.NewTicker(l.o.grantRevokeEvery)
		defer t.Stop()
		grant = t.C
	}
	rng := mrand.New(mrand.NewPCG(7, uint64(time.Now().UnixNano())))
	next := 0
	deadline, _ := ctx.Deadline()
	for {
		select {
		case <-ctx.Done():
			return
		case <-access.C:
			c := l.fleet.companies[l.fleet.oauth[rng.IntN(len(l.fleet.oauth))]]
			l.mock.RevokeAccessTokens(c.id)
			l.mu.Lock()
			l.accessRevs++
			l.mu.Unlock()
		case <-grant:
			if time.Until(deadline) < 20*time.Second {
				continue // leave time for the reconnect before the end
			}
			c := l.fleet.companies[l.fleet.oauth[next%len(l.fleet.oauth)]]
			next++
			churns.Go(func() { l.revokeGrant(context.WithoutCancel(ctx), c) })
		}
	}
}

// revokeGrant uninstalls c at Pleo (every token of its grant revoked), waits, then reconnects
// it: a new grant at the mock, stored with `credentials import` in a separate process.
func (l *load) revokeGrant(ctx context.Context, c company) {
	start := time.Now()
	l.mu.Lock()
	l.windows[c.id] = append(l.windows[c.id], window{start: start})
	idx := len(l.windows[c.id]) - 1
	l.grantRevs++
	l.mu.Unlock()
	note := func(format string, args ...any) {
		l.mu.Lock()
		l.churnNotes = append(l.churnNotes, fmt.Sprintf("company %s: ", c.id)+fmt.Sprintf(format, args...))
		l.mu.Unlock()
	}

	req, _ := http.NewRequestWithContext(ctx, http.MethodDelete, "http://"+l.sc.data+"/v1/installations/me", nil)
	req.Header.Set("X-Pleo-Company-Id", c.id)
	if resp, err := l.client.Do(req); err != nil {
		note("uninstall: %v", err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			note("uninstall answered %d", resp.StatusCode)
		}
	}
	time.Sleep(3 * time.Second) // callers meet reauthorization_required meanwhile

	access, refresh, exp := l.mock.AddOAuthCompany(c.id, "export-jobs:read")
	err := l.sc.importCredential(ctx, credentials.Credential{CompanyID: c.id, TenantID: c.tenant, Type: credentials.OAuth2,
		AccessToken: credentials.Secret(access), RefreshToken: credentials.Secret(refresh), ExpiresAt: exp, LastRefreshedAt: time.Now()})
	if err != nil {
		note("%v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		sent := time.Now()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+l.sc.data+"/v1/soak/reconnected", nil)
		req.Header.Set("X-Pleo-Company-Id", c.id)
		if resp, err := l.client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				l.mu.Lock()
				l.windows[c.id][idx].end = sent
				l.reconnects = append(l.reconnects, sent.Sub(start))
				l.mu.Unlock()
				return
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	note("not working 30s after the reconnect")
	l.mu.Lock()
	l.windows[c.id][idx].end = time.Now()
	l.mu.Unlock()
}
