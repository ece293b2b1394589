package credentials

// Store faults under a real FileStore, a real Broker and the strict fosite authorisation
// server of internal/oauthtest (rotating refresh tokens, reuse detection): a store write that
// fails (disk full, read-only directory) and the credentials file removed while running.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/oauthtest"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/testenv"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/metrics"
)

// ftEnv is a file store on disk, a broker over it and the authorisation server.
type ftEnv struct {
	t       *testing.T
	srv     *oauthtest.Server
	path    string
	store   *FileStore
	reg     *prometheus.Registry
	broker  *Broker
	reloads atomic.Int64 // OnReloadError calls (pleo_proxy_store_reload_failures_total)
	seeded  map[string]Credential
	client  *http.Client // asks the resource server whether a grant is accepted
}

// newFtEnv writes creds to a new credentials file (mode 0600), opens it and starts a broker
// on the real clock (the authorisation server checks tokens on it too).
func newFtEnv(t *testing.T, srv *oauthtest.Server, creds ...Credential) *ftEnv {
	t.Helper()
	e := &ftEnv{t: t, srv: srv, path: filepath.Join(t.TempDir(), "credentials.json"), reg: prometheus.NewRegistry(), seeded: map[string]Credential{},
		client: &http.Client{Timeout: 10 * time.Second}}
	if err := os.WriteFile(e.path, fsMarshal(t, creds...), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range creds {
		e.seeded[c.CompanyID] = c
	}
	e.store = fsOpen(t, e.path, FileStoreOptions{OnReloadError: func(error) { e.reloads.Add(1) }})
	e.broker = e.newBroker(e.store, time.Now, metrics.New(e.reg))
	return e
}

func (e *ftEnv) newBroker(s Store, now func() time.Time, m *metrics.Metrics) *Broker {
	e.t.Helper()
	b, err := NewBroker(BrokerOptions{
		Store:         s,
		OAuth:         OAuthClient{ClientID: e.srv.ClientID(), ClientSecret: Secret(e.srv.ClientSecret()), TokenURL: e.srv.TokenURL()},
		RefreshBefore: time.Minute,
		Now:           now,
		Metrics:       m,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(b.Close)
	return b
}

// grantOAuth runs the authorisation code flow for company n and returns its credential, its
// access token expired a minute ago (so the first Authorize refreshes).
func (e *ftEnv) grantOAuth(n int, expiresIn time.Duration) Credential {
	e.t.Helper()
	tok, err := e.srv.Grant(context.Background(), stCompany(n))
	if err != nil {
		e.t.Fatal(err)
	}
	return Credential{CompanyID: stCompany(n), Type: OAuth2, AccessToken: Secret(tok.AccessToken),
		RefreshToken: Secret(tok.RefreshToken), ExpiresAt: time.Now().Add(expiresIn)}
}

// onDisk parses the credentials file as it is now.
func (e *ftEnv) onDisk() map[string]Credential {
	e.t.Helper()
	data, err := os.ReadFile(e.path)
	if err != nil {
		e.t.Fatalf("reading the credentials file: %v", err)
	}
	creds, err := Parse(bytes.NewReader(data))
	if err != nil {
		e.t.Fatalf("the credentials file does not parse: %v", err)
	}
	return credentialMap(creds)
}

// accepted reports whether the resource server accepts g as company's credential.
func (e *ftEnv) accepted(g Grant, company string) bool {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL()+"/v1/probe", nil)
	req.Header["Authorization"] = g.HeaderValues()
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var echo oauthtest.Echo
	return resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(&echo) == nil && echo.CompanyID == company
}

// gauge reads a gauge (or counter) from the broker's registry; -1 when absent.
func (e *ftEnv) gauge(name string) float64 {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name || len(mf.GetMetric()) == 0 {
			continue
		}
		m := mf.GetMetric()[0]
		if m.GetGauge() != nil {
			return m.GetGauge().GetValue()
		}
		return m.GetCounter().GetValue()
	}
	return -1
}

// A store write that fails — the disk full, the directory read-only — after the token endpoint
// rotated the pair: the new pair is kept in memory and used, PendingWrites (readiness, and
// pleo_proxy_pending_token_writes) reports it, the file keeps the old pair untouched, and once
// the disk is writable again the retried write lands the new refresh token, which a new process
// on the file refreshes with, without a reuse detection.
//
// Defences: Broker.persist → keepPending/retryWrite (the rotated pair is never dropped on a
// failed commit), and FileStore.write returning the write's error rather than success (a
// swallowed ENOSPC would leave PendingWrites at 0 and the old refresh token on disk: the next
// process presents a spent token, Pleo revokes the grant). Remove either and this test fails.
func TestFaultStoreWriteFailureKeepsRotatedToken(t *testing.T) {
	srv := oauthtest.NewServer(t, oauthtest.Options{})
	cases := []struct {
		name string
		// fail makes the next writes fail and returns the function that ends the fault.
		fail func(t *testing.T, e *ftEnv, on *atomic.Bool) (end func())
	}{
		{"disk full (ENOSPC on the temporary file)", func(t *testing.T, e *ftEnv, on *atomic.Bool) func() {
			on.Store(true)
			return func() { on.Store(false) }
		}},
		{"read-only directory", func(t *testing.T, e *ftEnv, _ *atomic.Bool) func() {
			dir := filepath.Dir(e.path)
			if os.Geteuid() != 0 {
				if err := os.Chmod(dir, 0o500); err != nil {
					t.Fatal(err)
				}
				restore := func() { _ = os.Chmod(dir, 0o700) }
				t.Cleanup(restore)
				return restore
			}
			// Root ignores permission bits: bind-mount the directory read-only over itself,
			// which refuses root's writes too (EROFS).
			if err := syscall.Mount(dir, dir, "", syscall.MS_BIND, ""); err != nil {
				testenv.Unavailable(t, "cannot bind-mount %s read-only (needs CAP_SYS_ADMIN): %v", dir, err)
			}
			var once sync.Once
			restore := func() { once.Do(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) }) }
			t.Cleanup(restore)
			if err := syscall.Mount("", dir, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
				testenv.Unavailable(t, "cannot remount %s read-only (needs CAP_SYS_ADMIN): %v", dir, err)
			}
			return restore
		}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			oauth := (&ftEnv{t: t, srv: srv}).grantOAuth(10+i, -time.Minute)
			e := newFtEnv(t, srv, oauth, stKey(20+i, IntegratedAPIKey))
			company := oauth.CompanyID
			var full atomic.Bool
			// Set before any write, so the background write retry reads it race-free.
			e.store.beforeRename = func(tmp string) error {
				if full.Load() {
					return &os.PathError{Op: "write", Path: tmp, Err: syscall.ENOSPC}
				}
				return nil
			}
			end := tc.fail(t, e, &full)

			before := srv.Stats()
			g, err := e.broker.Authorize(ctx, company)
			if err != nil {
				t.Fatalf("Authorize with the store unwritable: %v (the rotated pair must be used from memory)", err)
			}
			if g.Same(NewGrant(oauth)) || !e.accepted(g, company) {
				t.Fatal("Authorize did not hand out the rotated access token")
			}
			if n := e.broker.PendingWrites(); n != 1 {
				t.Fatalf("PendingWrites = %d, want 1 (readiness reports not-ready from it)", n)
			}
			if v := e.gauge("pleo_proxy_pending_token_writes"); v != 1 {
				t.Fatalf("pleo_proxy_pending_token_writes = %v, want 1", v)
			}
			if c := e.onDisk()[company]; c.RefreshToken != oauth.RefreshToken {
				t.Fatal("the file changed although its write failed")
			}
			// Used from memory meanwhile: no more token calls.
			for range 3 {
				g2, err := e.broker.Authorize(ctx, company)
				if err != nil || !g2.Same(g) {
					t.Fatalf("Authorize while the write is pending: %v (same grant %v)", err, g2.Same(g))
				}
			}
			if d := srv.Stats().TokenCalls - before.TokenCalls; d != 1 {
				t.Fatalf("%d token calls, want 1", d)
			}

			end()
			testenv.WaitFor(t, "the pending pair to be written", 15*time.Second, func() bool { return e.broker.PendingWrites() == 0 })
			if v := e.gauge("pleo_proxy_pending_token_writes"); v != 0 {
				t.Fatalf("pleo_proxy_pending_token_writes = %v after the write landed, want 0", v)
			}
			onDisk := e.onDisk()
			if c := onDisk[company]; c.RefreshToken == oauth.RefreshToken || c.AccessToken.Reveal() != g.HeaderValues()[0][len("Bearer "):] {
				t.Fatal("the file does not hold the rotated pair that was handed out")
			}
			if _, ok := onDisk[stCompany(20+i)]; !ok {
				t.Fatal("the other company's credential was lost")
			}

			// A new process on the file, an hour later: it refreshes with the stored token.
			s2 := fsOpen(t, e.path, FileStoreOptions{})
			b2 := e.newBroker(s2, func() time.Time { return time.Now().Add(time.Hour) }, nil)
			before = srv.Stats()
			if _, err := b2.Authorize(ctx, company); err != nil {
				t.Fatalf("restart: %v", err)
			}
			if d := srv.Stats(); d.TokenCalls-before.TokenCalls != 1 || d.ReuseDetections != before.ReuseDetections || d.InvalidGrants != before.InvalidGrants {
				t.Fatalf("restart: token calls +%d, reuse +%d, invalid +%d; want 1, 0, 0",
					d.TokenCalls-before.TokenCalls, d.ReuseDetections-before.ReuseDetections, d.InvalidGrants-before.InvalidGrants)
			}
		})
	}
}

// The credentials file removed while the sidecar runs: the last good credentials are kept and
// served, Ping (readiness) and OnReloadError (pleo_proxy_store_reload_failures_total) report
// the removal, and the next write — here the commit of a rotated refresh token — recreates the
// file (mode 0600) from the last good credentials plus the change, which clears the report.
//
// Defence: FileStore.writeLocked starting from the last good snapshot when the file it served
// is gone. Without it the write starts from an empty file: the commit fails with ErrNotFound,
// the broker drops the rotated pair (the company must reconnect) and every other credential
// disappears with the next write.
func TestFaultCredentialsFileRemovedWhileRunning(t *testing.T) {
	srv := oauthtest.NewServer(t, oauthtest.Options{})
	ctx := context.Background()
	setup := &ftEnv{t: t, srv: srv}
	expired, valid := setup.grantOAuth(31, -time.Minute), setup.grantOAuth(32, time.Hour)
	key := stKey(33, StandaloneAPIKey)
	e := newFtEnv(t, srv, expired, valid, key)

	if err := os.Remove(e.path); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "the removal to be noticed", 5*time.Second, func() bool { return e.store.LastReloadError() != nil })
	if err := e.store.Ping(ctx); !errors.Is(err, errFileRemoved) {
		t.Fatalf("Ping = %v, want the removal reported", err)
	}
	if e.reloads.Load() == 0 {
		t.Fatal("OnReloadError was not called for the removal")
	}
	for _, c := range []Credential{valid, key} {
		g, err := e.broker.Authorize(ctx, c.CompanyID)
		if err != nil || !g.Same(NewGrant(c)) {
			t.Fatalf("company %s after the removal: %v", c.CompanyID, err)
		}
	}

	// A refresh: its commit recreates the file.
	before := srv.Stats()
	g, err := e.broker.Authorize(ctx, expired.CompanyID)
	if err != nil {
		t.Fatalf("refresh after the removal: %v", err)
	}
	if !e.accepted(g, expired.CompanyID) {
		t.Fatal("the refreshed token is not accepted")
	}
	if n := e.broker.PendingWrites(); n != 0 {
		t.Fatalf("PendingWrites = %d, want 0: the file should have been recreated", n)
	}
	if st := srv.Stats(); st.TokenCalls-before.TokenCalls != 1 || st.ReuseDetections != before.ReuseDetections {
		t.Fatalf("token calls +%d, reuse +%d; want 1 and 0", st.TokenCalls-before.TokenCalls, st.ReuseDetections-before.ReuseDetections)
	}
	onDisk := e.onDisk()
	ids := make([]string, 0, len(onDisk))
	for id := range onDisk {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	if want := []string{expired.CompanyID, valid.CompanyID, key.CompanyID}; !slices.Equal(ids, want) {
		t.Fatalf("recreated file holds %v, want %v", ids, want)
	}
	if c := onDisk[expired.CompanyID]; c.RefreshToken == expired.RefreshToken {
		t.Fatal("the recreated file lacks the rotated refresh token")
	}
	if m := fsMode(t, e.path); m != 0o600 {
		t.Fatalf("recreated file mode %o, want 600", m)
	}
	if err := e.store.Ping(ctx); err != nil {
		t.Fatalf("Ping after the file was recreated: %v", err)
	}
	// It stays recreated: polling reads the new file, not a removal.
	fsWaitPolls(t, e.store, 5)
	if err := e.store.Ping(ctx); err != nil {
		t.Fatalf("Ping a few polls later: %v", err)
	}
}

// A file that was never there (a fresh volume) is not "removed": the first write creates it
// with only what was written, as before.
func TestFaultMissingAtStartIsNotRecreatedFromAnything(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credentials.json")
	s := fsOpen(t, path, FileStoreOptions{})
	fsWaitPolls(t, s, 3)
	if err := s.PutAll(t.Context(), []Credential{stKey(41, IntegratedAPIKey)}, false); err != nil {
		t.Fatal(err)
	}
	if list, _ := s.List(t.Context()); !slices.Equal(stIDs(list), []string{stCompany(41)}) {
		t.Fatalf("List = %v", stIDs(list))
	}
}
