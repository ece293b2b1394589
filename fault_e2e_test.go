package main

// Faults through the built binary: the store's directory read-only, its file system full, the
// credentials file deleted while the sidecar runs, and a slow upstream. The authorisation and
// resource server is internal/oauthtest (strict rotation with reuse detection), so a refresh
// token lost or presented twice shows as a reuse detection or an invalid grant.

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/oauthtest"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/testenv"
)

// faultUser is the user the sidecar runs as in the read-only test when the tests run as root
// (root ignores permission bits): nobody.
const faultUser = 65534

// faultEnv is an authorisation server, a credentials file in a directory of its own, and the
// environment to run the sidecar on them.
type faultEnv struct {
	t       *testing.T
	srv     *oauthtest.Server
	dir     string // the store's directory
	path    string // credentials.json in dir
	env     []string
	uid     int    // run the sidecar as this user; -1: as this process
	bin     string // the binary, where uid can run it
	initial map[string]credentials.Credential
}

// newFaultEnv writes OAuth credentials for companies (freshly granted, valid for an hour) to
// dir/credentials.json, owned by uid when uid >= 0.
func newFaultEnv(t *testing.T, dir string, uid int, companies ...string) *faultEnv {
	t.Helper()
	e := &faultEnv{t: t, srv: oauthtest.NewServer(t, oauthtest.Options{}), dir: dir, path: filepath.Join(dir, "credentials.json"),
		uid: uid, bin: binary(t), initial: map[string]credentials.Credential{}}
	var creds []credentials.Credential
	for _, c := range companies {
		cred := grantedCredential(t, e.srv, c, time.Now().Add(time.Hour))
		cred.LastRefreshedAt = time.Now()
		creds = append(creds, cred)
		e.initial[c] = cred
	}
	data, err := credentials.Marshal(creds)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if uid >= 0 {
		e.bin = runnableCopy(t, e.bin)
		for _, p := range []string{dir, e.path} {
			if err := os.Chown(p, uid, uid); err != nil {
				t.Fatal(err)
			}
		}
	}
	e.env = oauthSidecarEnv(e.srv, "file://"+e.path, "PLEO_PROXY_STORE_POLL_INTERVAL=200ms")
	return e
}

// sharedDir returns a new directory that another user can enter (t.TempDir's parents are
// 0700), removed when the test ends.
func sharedDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "pleo-auth-proxy-fault-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// runnableCopy copies the binary where any user can run it.
func runnableCopy(t *testing.T, bin string) string {
	t.Helper()
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(sharedDir(t), "pleo-auth-proxy")
	if err := os.WriteFile(out, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return out
}

// start runs `serve` (as e.uid when set) and waits for its listeners.
func (e *faultEnv) start() *sidecar {
	t := e.t
	t.Helper()
	cmd := exec.Command(e.bin, "serve")
	cmd.Env = e.env
	if e.uid >= 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(e.uid), Gid: uint32(e.uid)}}
	}
	pipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		if e.uid >= 0 && errors.Is(err, syscall.EPERM) {
			testenv.Unavailable(t, "cannot run the sidecar as uid %d here (no CAP_SETUID): %v", e.uid, err)
		}
		t.Fatalf("starting the sidecar: %v", err)
	}
	s := &sidecar{cmd: cmd, logs: &strings.Builder{}, mu: &sync.Mutex{}}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	started := make(chan [2]string, 1)
	go func() {
		re := regexp.MustCompile(`listen=(\S+) admin=(\S+)`)
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			s.mu.Lock()
			s.logs.WriteString(sc.Text() + "\n")
			s.mu.Unlock()
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				started <- [2]string{m[1], m[2]}
			}
		}
	}()
	select {
	case a := <-started:
		s.data, s.admin = a[0], a[1]
	case <-time.After(15 * time.Second):
		t.Fatalf("sidecar did not start:\n%s", e.logsOf(s))
	}
	return s
}

func (e *faultEnv) logsOf(s *sidecar) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logs.String()
}

var faultClient = &http.Client{Timeout: 20 * time.Second}

// mustGet sends a request for company and fails unless the resource server echoed it.
func (e *faultEnv) mustGet(s *sidecar, company, phase string) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+s.data+"/v1/export-jobs", nil)
	req.Header.Set("X-Pleo-Company-Id", company)
	resp, err := faultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s: %v", phase, err)
	}
	defer resp.Body.Close()
	var echo oauthtest.Echo
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &echo) != nil || echo.CompanyID != company {
		e.t.Fatalf("%s: company %s: %d %s\nsidecar log:\n%s", phase, company, resp.StatusCode, body, e.logsOf(s))
	}
}

// readyz returns /readyz's status and body.
func readyz(t *testing.T, s *sidecar) (int, string) {
	t.Helper()
	resp, err := faultClient.Get("http://" + s.admin + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metricValue returns an unlabelled metric's value from /metrics (-1 when absent).
func metricValue(t *testing.T, s *sidecar, name string) float64 {
	t.Helper()
	resp, err := faultClient.Get("http://" + s.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return -1
}

// storeWriteFault runs one fault that makes the store's writes fail: a refresh forced by a
// server-side revocation still succeeds from memory, /readyz and
// pleo_proxy_pending_token_writes report the pending write, the file keeps the old pair; once
// end() lifts the fault the write lands and readiness returns; a new process on the file then
// refreshes without a reuse detection.
func storeWriteFault(t *testing.T, e *faultEnv, company string, begin, end func()) {
	s := e.start()
	e.mustGet(s, company, "before the fault")
	if code, body := readyz(t, s); code != http.StatusOK {
		t.Fatalf("/readyz before the fault: %d %s", code, body)
	}
	begin()
	before := e.srv.Stats()
	e.srv.RevokeAccessTokens(company)
	e.mustGet(s, company, "store unwritable, token revoked")
	if d := e.srv.Stats().TokenCalls - before.TokenCalls; d != 1 {
		t.Fatalf("%d token calls, want 1", d)
	}
	code, body := readyz(t, s)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "token writes") {
		t.Fatalf("/readyz with a pending write: %d %s, want 503 naming the token writes", code, body)
	}
	if v := metricValue(t, s, "pleo_proxy_pending_token_writes"); v != 1 {
		t.Fatalf("pleo_proxy_pending_token_writes = %v, want 1", v)
	}
	for range 3 {
		e.mustGet(s, company, "store unwritable, rotated token in memory")
	}
	if d := e.srv.Stats().TokenCalls - before.TokenCalls; d != 1 {
		t.Fatalf("%d token calls while the write is pending, want 1 (the rotated token is used)", d)
	}
	if c := readFile(t, e.path)[company]; c.RefreshToken != e.initial[company].RefreshToken {
		t.Fatal("the credentials file changed although its write failed")
	}

	end()
	testenv.WaitFor(t, "readiness after the store is writable again", 40*time.Second, func() bool {
		code, _ := readyz(t, s)
		return code == http.StatusOK
	})
	if v := metricValue(t, s, "pleo_proxy_pending_token_writes"); v != 0 {
		t.Fatalf("pleo_proxy_pending_token_writes = %v after the write, want 0", v)
	}
	if c := readFile(t, e.path)[company]; c.RefreshToken == e.initial[company].RefreshToken {
		t.Fatal("the rotated refresh token was not written")
	}
	if !strings.Contains(e.logsOf(s), "rotated refresh token persisted after retry") {
		t.Fatalf("no log of the retried write:\n%s", e.logsOf(s))
	}

	s.kill(t)
	e.srv.RevokeAccessTokens(company)
	s = e.start()
	e.mustGet(s, company, "restart on the file")
	if st := e.srv.Stats(); st.ReuseDetections != 0 || st.InvalidGrants != 0 {
		t.Fatalf("%d reuse detections, %d invalid grants: the file does not hold the live refresh token", st.ReuseDetections, st.InvalidGrants)
	}
}

// readFile parses the credentials file.
func readFile(t *testing.T, path string) map[string]credentials.Credential {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	creds, err := credentials.Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]credentials.Credential{}
	for _, c := range creds {
		out[c.CompanyID] = c
	}
	return out
}

const faultCompany = "fa170000-0000-4000-8000-000000000001"

// The store's directory turns read-only while the sidecar runs (a volume remounted read-only,
// a permission change). As root, the sidecar runs as nobody, for which permission bits count.
//
// Defences: the broker keeping a rotated pair whose write failed (in use, write retried),
// readiness's "token writes" check (serve.go), and the file store returning the write error.
func TestFaultE2EStoreDirectoryReadOnly(t *testing.T) {
	uid := -1
	if os.Geteuid() == 0 {
		uid = faultUser
	}
	dir := filepath.Join(sharedDir(t), "store")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	e := newFaultEnv(t, dir, uid, faultCompany)
	storeWriteFault(t, e, faultCompany,
		func() {
			if err := os.Chmod(dir, 0o500); err != nil {
				t.Fatal(err)
			}
		},
		func() {
			if err := os.Chmod(dir, 0o700); err != nil {
				t.Fatal(err)
			}
		})
}

// The store's file system fills up (a tiny tmpfs, filled by another file). It needs root with
// CAP_SYS_ADMIN to mount the tmpfs (skipped without, except in CI where it is required);
// credentials/fault_test.go also injects ENOSPC into the file store in every environment.
func TestFaultE2EStoreDiskFull(t *testing.T) {
	dir := filepath.Join(sharedDir(t), "tmpfs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=64k,mode=0700"); err != nil {
		testenv.Unavailable(t, "cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	e := newFaultEnv(t, dir, -1, faultCompany)
	filler := filepath.Join(dir, "filler")
	storeWriteFault(t, e, faultCompany,
		func() {
			f, err := os.Create(filler)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			block := make([]byte, 1024)
			for {
				if _, err := f.Write(block); err != nil {
					if !errors.Is(err, syscall.ENOSPC) {
						t.Fatal(err)
					}
					return
				}
			}
		},
		func() {
			if err := os.Remove(filler); err != nil {
				t.Fatal(err)
			}
		})
}

// The credentials file deleted while the sidecar runs: the last good credentials keep being
// served; /readyz names the removal and pleo_proxy_store_reload_failures_total counts it; the
// next token refresh recreates the file (mode 0600) with every credential, which clears
// readiness; a restart on it refreshes without a reuse detection.
//
// Defences: the file store keeping the last good snapshot on a removed file, and recreating
// the file from it on the next write (filestore.go writeLocked).
func TestFaultE2ECredentialsFileDeleted(t *testing.T) {
	other := "fa170000-0000-4000-8000-000000000002"
	e := newFaultEnv(t, t.TempDir(), -1, faultCompany, other)
	s := e.start()
	e.mustGet(s, faultCompany, "before the removal")

	if err := os.Remove(e.path); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "readiness to report the removal", 10*time.Second, func() bool {
		code, body := readyz(t, s)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "removed")
	})
	if v := metricValue(t, s, "pleo_proxy_store_reload_failures_total"); v < 1 {
		t.Fatalf("pleo_proxy_store_reload_failures_total = %v, want >= 1", v)
	}
	e.mustGet(s, faultCompany, "file removed, cached credential")
	e.mustGet(s, other, "file removed, credential not yet cached")

	e.srv.RevokeAccessTokens(faultCompany)
	e.mustGet(s, faultCompany, "file removed, refresh")
	if _, err := os.Stat(e.path); err != nil {
		t.Fatalf("the file was not recreated by the refresh's write: %v\n%s", err, e.logsOf(s))
	}
	if fi, _ := os.Stat(e.path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("recreated with mode %o", fi.Mode().Perm())
	}
	onDisk := readFile(t, e.path)
	if len(onDisk) != 2 || onDisk[faultCompany].RefreshToken == e.initial[faultCompany].RefreshToken || onDisk[other].RefreshToken != e.initial[other].RefreshToken {
		t.Fatalf("recreated file holds %d credentials (rotated token stored: %v)", len(onDisk),
			onDisk[faultCompany].RefreshToken != e.initial[faultCompany].RefreshToken)
	}
	testenv.WaitFor(t, "readiness after the file was recreated", 10*time.Second, func() bool {
		code, _ := readyz(t, s)
		return code == http.StatusOK
	})

	s.kill(t)
	e.srv.RevokeAccessTokens(faultCompany)
	e.srv.RevokeAccessTokens(other)
	s = e.start()
	e.mustGet(s, faultCompany, "restart")
	e.mustGet(s, other, "restart")
	if st := e.srv.Stats(); st.ReuseDetections != 0 || st.InvalidGrants != 0 {
		t.Fatalf("%d reuse detections, %d invalid grants after the restart", st.ReuseDetections, st.InvalidGrants)
	}
}

// PLEO_PROXY_UPSTREAM_TIMEOUT reaches the transport: an upstream that sends no response head
// in time is a 504 upstream_timeout problem.
func TestFaultE2ESlowUpstream(t *testing.T) {
	release := make(chan struct{})
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer upstream.Close()
	defer close(release)
	dir := t.TempDir()
	path := filepath.Join(dir, "credentials.json")
	data, _ := credentials.Marshal([]credentials.Credential{{CompanyID: faultCompany, Type: credentials.IntegratedAPIKey, APIKey: "k-slow"}})
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	e := &faultEnv{t: t, bin: binary(t), uid: -1, env: []string{
		"PATH=" + os.Getenv("PATH"),
		"PLEO_PROXY_STORE=file://" + path,
		"PLEO_PROXY_UPSTREAM_URL=" + upstream.URL,
		"PLEO_PROXY_UPSTREAM_TIMEOUT=400ms",
		"PLEO_PROXY_LISTEN_ADDR=127.0.0.1:0",
		"PLEO_PROXY_ADMIN_ADDR=127.0.0.1:0",
	}}
	s := e.start()
	req, _ := http.NewRequest(http.MethodGet, "http://"+s.data+"/v1/slow", nil)
	req.Header.Set("X-Pleo-Company-Id", faultCompany)
	start := time.Now()
	resp, err := faultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusGatewayTimeout || !strings.Contains(string(body), `"code":"upstream_timeout"`) {
		t.Fatalf("got %d %s, want 504 upstream_timeout", resp.StatusCode, body)
	}
	if took := time.Since(start); took < 400*time.Millisecond || took > 10*time.Second {
		t.Fatalf("answered after %s, want about PLEO_PROXY_UPSTREAM_TIMEOUT (400ms)", took)
	}
}
