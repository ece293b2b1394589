package credentials

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/testenv"
)

// fsPoll is the poll interval of the file store tests.
const fsPoll = 20 * time.Millisecond

// fsWaitPolls waits until s has polled its file n more times.
func fsWaitPolls(t *testing.T, s *FileStore, n int64) {
	t.Helper()
	until := s.polls.Load() + n
	testenv.WaitFor(t, fmt.Sprintf("%d polls", n), 5*time.Second, func() bool { return s.polls.Load() >= until })
}

// fsOpen opens a FileStore polling every fsPoll and closes it when the test ends.
func fsOpen(t *testing.T, path string, opts FileStoreOptions) *FileStore {
	t.Helper()
	if opts.PollInterval == 0 {
		opts.PollInterval = fsPoll
	}
	s, err := OpenFileStore(path, opts)
	if err != nil {
		t.Fatalf("OpenFileStore: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// fsMarshal encodes creds as a credentials file, with the given versions.
func fsMarshal(t *testing.T, creds ...Credential) []byte {
	t.Helper()
	data, err := Marshal(creds)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// marshalFile encodes creds whole, as the file store writes them record by record
// (writeSnapshot): the plain format (Marshal) without a sealer, the encrypted one with it. It
// is the reference the streaming writer and reader are tested against.
func marshalFile(creds []Credential, sealer *Sealer) ([]byte, error) {
	if sealer == nil {
		return Marshal(creds)
	}
	records := make([]Record, 0, len(creds))
	for _, c := range creds {
		r := RecordOf(c)
		r.CompanyID = CanonicalCompanyID(r.CompanyID)
		if err := sealRecord(&r, sealer); err != nil {
			return nil, err
		}
		records = append(records, r)
	}
	return encodeDocument(&FileEncryption{Version: FileEncryptionVersion}, records)
}

// fsReplace writes data to path the way another well-behaved writer would: a new file renamed
// over the old one.
func fsReplace(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".other-writer"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func fsMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func fsGet(t *testing.T, s Store, n int) Credential {
	t.Helper()
	c, err := s.Get(t.Context(), stCompany(n))
	if err != nil {
		t.Fatalf("Get(%d): %v", n, err)
	}
	return c
}

// fsHas reports whether s holds company n with the given refresh token.
func fsHas(s Store, n int, refresh string) bool {
	c, err := s.Get(context.Background(), stCompany(n))
	return err == nil && c.RefreshToken.Reveal() == refresh
}

// fsLog is a goroutine-safe log sink.
type fsLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *fsLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *fsLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func TestFileStoreConformance(t *testing.T) {
	testStoreConformance(t, func(t *testing.T) Store {
		return fsOpen(t, filepath.Join(t.TempDir(), "credentials.json"), FileStoreOptions{})
	})
}

func TestFileStoreMissingFileIsEmptyAndCreatedOnWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "credentials.json")
	s := fsOpen(t, path, FileStoreOptions{})
	if list, _ := s.List(t.Context()); len(list) != 0 {
		t.Fatalf("List = %v, want empty", list)
	}
	if err := s.Ping(t.Context()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Open created the file: %v", err)
	}
	// Several polls of a still-missing file are not a failure.
	fsWaitPolls(t, s, 6)
	if err := s.Ping(t.Context()); err != nil {
		t.Fatalf("Ping after polling a missing file: %v", err)
	}

	c := stOAuth(1, "tenant-1")
	c.LastRefreshedAt = time.Date(2026, 11, 28, 11, 30, 0, 123, time.UTC)
	c.LastError = "timeout"
	if err := s.PutAll(t.Context(), []Credential{c, stKey(2, StandaloneAPIKey)}, false); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, path + ".lock"} {
		if m := fsMode(t, p); m != 0o600 {
			t.Errorf("%s mode = %o, want 600", p, m)
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := Parse(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("the written file does not parse: %v", err)
	}
	if got := stIDs(parsed); !slices.Equal(got, []string{stCompany(1), stCompany(2)}) {
		t.Errorf("file holds %v", got)
	}

	// A restart reads back exactly what was written, versions included.
	before, _ := s.List(t.Context())
	s2 := fsOpen(t, path, FileStoreOptions{})
	after, _ := s2.List(t.Context())
	if !slices.EqualFunc(before, after, sameCredential) {
		t.Errorf("reopened store = %v, want %v", after, before)
	}
}

func TestFileStoreWritesMode0600(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credentials.json")
	if err := os.WriteFile(path, fsMarshal(t, stOAuth(1, "")), 0o400); err != nil {
		t.Fatal(err)
	}
	s := fsOpen(t, path, FileStoreOptions{})
	var tmpMode os.FileMode
	s.beforeRename = func(tmp string) error {
		tmpMode = fsMode(t, tmp)
		return nil
	}
	if _, err := s.Update(t.Context(), fsGet(t, s, 1)); err != nil {
		t.Fatal(err)
	}
	if tmpMode != 0o600 {
		t.Errorf("temporary file mode = %o, want 600", tmpMode)
	}
	if m := fsMode(t, path); m != 0o600 {
		t.Errorf("file mode after a write = %o, want 600", m)
	}
}

func TestFileStoreCrashBeforeRename(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "credentials.json")
	s := fsOpen(t, path, FileStoreOptions{})
	if err := s.PutAll(t.Context(), []Credential{stOAuth(1, "tenant-1")}, false); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	errCrash := errors.New("simulated crash")
	var stale string
	var tmpMode os.FileMode
	s.beforeRename = func(tmp string) error {
		tmpMode = fsMode(t, tmp)
		// The store removes its temporary file when a write fails; a crash would not, so
		// keep a copy under the same prefix.
		stale = tmp + "-crashed"
		if err := os.Link(tmp, stale); err != nil {
			t.Fatal(err)
		}
		return errCrash
	}
	c := fsGet(t, s, 1)
	rotated := c
	rotated.RefreshToken = "rotated"
	if _, err := s.Update(t.Context(), rotated); !errors.Is(err, errCrash) {
		t.Fatalf("Update: %v, want the simulated crash", err)
	}
	if tmpMode != 0o600 {
		t.Errorf("temporary file mode = %o, want 600", tmpMode)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Errorf("the file changed:\n%s\nwant\n%s", after, before)
	}
	if !fsHas(s, 1, "refresh-1") {
		t.Errorf("the store serves a write that never reached the file: %v", fsGet(t, s, 1))
	}
	if _, err := os.Stat(stale); err != nil {
		t.Fatalf("no stale temporary file to clean: %v", err)
	}

	// A restart reads the old file and removes the stale temporary file.
	s2 := fsOpen(t, path, FileStoreOptions{})
	if !fsHas(s2, 1, "refresh-1") {
		t.Errorf("reopened store = %v, want the old credential", fsGet(t, s2, 1))
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale temporary file still there: %v", err)
	}

	// The write can be retried with the same version.
	s.beforeRename = nil
	if _, err := s.Update(t.Context(), rotated); err != nil {
		t.Fatalf("retried Update: %v", err)
	}
	stWaitFor(t, "the other instance to see the retried write", func() bool { return fsHas(s2, 1, "rotated") })
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file left behind: %s", e.Name())
		}
	}
}

func TestFileStoreOpenRejectsBadFile(t *testing.T) {
	cases := []struct {
		name    string
		content string
		want    string // in the error
	}{
		{"not JSON", "this is not json", "invalid character"},
		{"empty", "", "empty"},
		{"no credentials array", "{}", `missing "credentials"`},
		{"unknown field", `{"credentials": [], "extra": 1}`, "unknown field"},
		{"trailing data", `{"credentials": []} {}`, "after the document"},
		{"invalid record", `{"credentials": [{"company_id": "nope", "type": "oauth2", "refresh_token": "s3cr3t-token"}]}`, "company_id"},
		{"duplicate company", fmt.Sprintf(`{"credentials": [{"company_id": %q, "type": "integrated_api_key", "api_key": "k1"}, {"company_id": %q, "type": "integrated_api_key", "api_key": "k2"}]}`, stCompany(1), stCompany(1)), "duplicates"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "credentials.json")
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			mtime := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
			if err := os.Chtimes(path, mtime, mtime); err != nil {
				t.Fatal(err)
			}
			s, err := OpenFileStore(path, FileStoreOptions{PollInterval: fsPoll})
			if err == nil {
				_ = s.Close()
				t.Fatal("OpenFileStore succeeded")
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not name %s and %q", err, path, tc.want)
			}
			if strings.Contains(err.Error(), "s3cr3t") {
				t.Errorf("error leaks a secret: %q", err)
			}
			data, _ := os.ReadFile(path)
			fi, _ := os.Stat(path)
			if string(data) != tc.content || !fi.ModTime().Equal(mtime) {
				t.Errorf("the file was touched")
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 1 {
				t.Errorf("Open left files behind: %v", entries)
			}
		})
	}
	t.Run("a directory", func(t *testing.T) {
		path := t.TempDir()
		if s, err := OpenFileStore(path, FileStoreOptions{}); err == nil {
			_ = s.Close()
			t.Fatal("OpenFileStore of a directory succeeded")
		} else if !strings.Contains(err.Error(), path) {
			t.Errorf("error %q does not name %s", err, path)
		}
	})
}

func TestFileStorePicksUpChangesByOthers(t *testing.T) {
	// Every writer changes company 1, removes 2, leaves 3 alone and adds 4.
	changed1 := func(c1 Credential) Credential {
		c1.RefreshToken = "changed-1"
		return c1
	}
	added4 := stOAuth(4, "tenant-4")
	rawFile := func(t *testing.T, c1, c3 Credential) []byte {
		c1 = changed1(c1)
		c1.Version++
		c4 := added4
		c4.Version = 1
		return fsMarshal(t, c1, c3, c4)
	}
	cases := []struct {
		name  string
		write func(t *testing.T, path string, c1, c3 Credential)
	}{
		{"second FileStore", func(t *testing.T, path string, c1, c3 Credential) {
			other, err := OpenFileStore(path, FileStoreOptions{PollInterval: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			defer other.Close()
			ctx := t.Context()
			if _, err := other.Update(ctx, changed1(c1)); err != nil {
				t.Fatal(err)
			}
			if err := other.Delete(ctx, stCompany(2)); err != nil {
				t.Fatal(err)
			}
			if err := other.PutAll(ctx, []Credential{added4}, false); err != nil {
				t.Fatal(err)
			}
		}},
		{"write and rename", func(t *testing.T, path string, c1, c3 Credential) {
			fsReplace(t, path, rawFile(t, c1, c3))
		}},
		{"rewrite in place", func(t *testing.T, path string, c1, c3 Credential) {
			if err := os.WriteFile(path, rawFile(t, c1, c3), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "credentials.json")
			s := fsOpen(t, path, FileStoreOptions{})
			if err := s.PutAll(t.Context(), []Credential{stOAuth(1, "tenant-1"), stOAuth(2, ""), stOAuth(3, "")}, false); err != nil {
				t.Fatal(err)
			}
			var ev stEvents
			s.Subscribe(ev.record)

			tc.write(t, path, fsGet(t, s, 1), fsGet(t, s, 3))

			stWaitFor(t, "the change to be picked up", func() bool {
				_, err := s.Get(t.Context(), stCompany(2))
				return fsHas(s, 1, "changed-1") && errors.Is(err, ErrNotFound) && fsHas(s, 4, "refresh-4")
			})
			stWaitFor(t, "subscribers to hear of it", func() bool {
				return ev.saw(stCompany(1)) && ev.saw(stCompany(2)) && ev.saw(stCompany(4))
			})
			if ev.announced(stCompany(3)) {
				t.Errorf("subscribers told of an unchanged company")
			}
			if c, err := s.GetByTenant(t.Context(), "tenant-4"); err != nil || c.CompanyID != stCompany(4) {
				t.Errorf("GetByTenant(tenant-4) = %v, %v", c, err)
			}
			if c := fsGet(t, s, 1); c.Version != 2 {
				t.Errorf("company 1 at version %d, want 2", c.Version)
			}
			if err := s.Ping(t.Context()); err != nil {
				t.Errorf("Ping: %v", err)
			}
		})
	}
}

func TestFileStoreIgnoresTouchAndSameContent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credentials.json")
	s := fsOpen(t, path, FileStoreOptions{})
	if err := s.PutAll(t.Context(), []Credential{stOAuth(1, "")}, false); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	var ev stEvents
	s.Subscribe(ev.record)
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(path, later, later); err != nil {
		t.Fatal(err)
	}
	fsReplace(t, path, data)
	fsWaitPolls(t, s, 3*hashEveryPolls)
	if n := ev.count(); n != 0 {
		t.Errorf("%d events for a file whose content did not change", n)
	}
}

// The Kubernetes secret-volume pattern: credentials.json -> ..data/credentials.json and
// ..data -> a timestamped directory, switched by renaming a new ..data link over the old one.
func TestFileStoreSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	writeVersion := func(name string, creds ...Credential) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "credentials.json"), fsMarshal(t, creds...), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeVersion("..2026_11_28_12_00_00.1", stOAuth(1, ""))
	if err := os.Symlink("..2026_11_28_12_00_00.1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "credentials.json")
	if err := os.Symlink(filepath.Join("..data", "credentials.json"), path); err != nil {
		t.Fatal(err)
	}
	s := fsOpen(t, path, FileStoreOptions{})
	if !fsHas(s, 1, "refresh-1") {
		t.Fatal("the linked file was not read")
	}
	var ev stEvents
	s.Subscribe(ev.record)

	c := stOAuth(1, "")
	c.RefreshToken = "from-ts2"
	writeVersion("..2026_11_28_12_05_00.2", c)
	if err := os.Symlink("..2026_11_28_12_05_00.2", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	stWaitFor(t, "the swapped link to be followed", func() bool { return fsHas(s, 1, "from-ts2") })
	stWaitFor(t, "the event", func() bool { return ev.saw(stCompany(1)) })
}

func TestFileStoreBadReloadKeepsLastGood(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credentials.json")
	var logs fsLog
	var hookCalls atomic.Int32
	s := fsOpen(t, path, FileStoreOptions{
		Logger:        slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		OnReloadError: func(error) { hookCalls.Add(1) },
	})
	if err := s.PutAll(t.Context(), []Credential{stOAuth(1, "")}, false); err != nil {
		t.Fatal(err)
	}
	reloadFailed := func() bool { return s.LastReloadError() != nil }
	failures := func() int { return strings.Count(logs.String(), "cannot reload") }

	// A record that fails validation, carrying a secret that must not reach the log.
	bad := `{"credentials": [{"company_id": "not-a-uuid", "type": "oauth2", "refresh_token": "SECRET-in-bad-file"}]}`
	fsReplace(t, path, []byte(bad))
	stWaitFor(t, "the reload failure", reloadFailed)
	err := s.Ping(t.Context())
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "company_id") {
		t.Errorf("Ping = %v, want the reload failure naming %s", err, path)
	}
	if !errors.Is(err, s.LastReloadError()) {
		t.Errorf("Ping does not wrap LastReloadError")
	}
	if !fsHas(s, 1, "refresh-1") {
		t.Errorf("the last good credential is gone")
	}
	stWaitFor(t, "OnReloadError", func() bool { return hookCalls.Load() > 0 })

	// Writes refuse to overwrite a file they cannot read.
	if _, err := s.Update(t.Context(), fsGet(t, s, 1)); err == nil {
		t.Error("Update over an unparsable file succeeded")
	}
	if data, _ := os.ReadFile(path); string(data) != bad {
		t.Errorf("the unparsable file was overwritten")
	}

	// The same content again is not a new failure; a different one is logged once more.
	fsReplace(t, path, []byte(bad))
	fsWaitPolls(t, s, 3*hashEveryPolls)
	if n := failures(); n != 1 {
		t.Errorf("logged %d failures for one bad file, want 1:\n%s", n, logs.String())
	}
	fsReplace(t, path, []byte(`{"credentials": [`))
	stWaitFor(t, "the second failure", func() bool {
		err := s.LastReloadError()
		return err != nil && !strings.Contains(err.Error(), "company_id")
	})
	fsWaitPolls(t, s, 3)
	if n := failures(); n != 2 {
		t.Errorf("logged %d failures for two bad files, want 2:\n%s", n, logs.String())
	}
	if !fsHas(s, 1, "refresh-1") {
		t.Errorf("the last good credential is gone")
	}

	// A good file clears the failure.
	c := stOAuth(1, "")
	c.RefreshToken = "fixed"
	c.Version = 7
	fsReplace(t, path, fsMarshal(t, c))
	stWaitFor(t, "recovery", func() bool { return !reloadFailed() && fsHas(s, 1, "fixed") })
	if err := s.Ping(t.Context()); err != nil {
		t.Errorf("Ping after recovery: %v", err)
	}
	stWaitFor(t, "the recovery to be logged", func() bool { return strings.Contains(logs.String(), "readable again") })
	if strings.Contains(logs.String(), "SECRET") {
		t.Errorf("a secret reached the log:\n%s", logs.String())
	}
}

func TestFileStoreRemovedFileKeepsLastGood(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credentials.json")
	s := fsOpen(t, path, FileStoreOptions{})
	if err := s.PutAll(t.Context(), []Credential{stOAuth(1, "")}, false); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	stWaitFor(t, "the removal to be noticed", func() bool { return s.LastReloadError() != nil })
	if !fsHas(s, 1, "refresh-1") {
		t.Error("the last good credential is gone")
	}
	// A write recreates the file from the last good credentials plus the change (see
	// TestFaultCredentialsFileRemovedWhileRunning for why).
	if err := s.PutAll(t.Context(), []Credential{stOAuth(2, "")}, false); err != nil {
		t.Fatal(err)
	}
	if err := s.Ping(t.Context()); err != nil {
		t.Errorf("Ping after the file was written again: %v", err)
	}
	want := []string{stCompany(1), stCompany(2)}
	if list, _ := s.List(t.Context()); !slices.Equal(stIDs(list), want) {
		t.Errorf("List = %v, want %v", stIDs(list), want)
	}
	if s2 := fsOpen(t, path, FileStoreOptions{}); !fsHas(s2, 1, "refresh-1") || !fsHas(s2, 2, "refresh-2") {
		t.Error("the recreated file does not hold both credentials")
	}
}

// Two stores on one file (as the sidecar and a `credentials import` process are) see each
// other's writes under the lock: compare-and-swap holds across them, and no update is lost.
func TestFileStoreCrossInstance(t *testing.T) {
	t.Run("CompareAndSwapOneWinner", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "credentials.json")
		a := fsOpen(t, path, FileStoreOptions{PollInterval: time.Hour})
		b := fsOpen(t, path, FileStoreOptions{PollInterval: time.Hour})
		if err := a.PutAll(t.Context(), []Credential{stOAuth(1, "")}, false); err != nil {
			t.Fatal(err)
		}
		start := fsGet(t, a, 1) // b has not polled: only its write path can know
		const n = 20
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			s := a
			if i%2 == 1 {
				s = b
			}
			wg.Go(func() {
				c := start
				c.RefreshToken = Secret(fmt.Sprintf("rotated-%d", i))
				_, errs[i] = s.Update(t.Context(), c)
			})
		}
		wg.Wait()
		winners := 0
		for i, err := range errs {
			switch {
			case err == nil:
				winners++
			case !errors.Is(err, ErrConflict):
				t.Errorf("Update %d: %v", i, err)
			}
		}
		if winners != 1 {
			t.Fatalf("%d updates won across two stores, want exactly 1", winners)
		}
		// A loser sees the winner's version at once: a failed CAS refreshes the snapshot.
		for _, s := range []*FileStore{a, b} {
			if c := fsGet(t, s, 1); c.Version != start.Version+1 {
				t.Errorf("after the race a store serves version %d, want %d", c.Version, start.Version+1)
			}
		}
	})
	t.Run("NoLostUpdates", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "credentials.json")
		a := fsOpen(t, path, FileStoreOptions{PollInterval: time.Hour})
		b := fsOpen(t, path, FileStoreOptions{PollInterval: time.Hour})
		const n = 20
		var wg sync.WaitGroup
		for i := range n {
			s := a
			if i%2 == 1 {
				s = b
			}
			wg.Go(func() {
				if err := s.PutAll(t.Context(), []Credential{stOAuth(100+i, "")}, false); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		c := fsOpen(t, path, FileStoreOptions{})
		if list, _ := c.List(t.Context()); len(list) != n {
			t.Errorf("the file holds %d credentials, want %d: %v", len(list), n, list)
		}
	})
}

func TestFileStoreLockWaitHonoursContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credentials.json")
	s := fsOpen(t, path, FileStoreOptions{})
	if err := s.PutAll(t.Context(), []Credential{stOAuth(1, "")}, false); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)

	// Another process holds the lock.
	lock, err := os.OpenFile(path+".lock", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	c := fsGet(t, s, 1)
	if _, err := s.Update(ctx, c); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Update while locked: %v, want context.DeadlineExceeded", err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Error("the file changed while another process held the lock")
	}

	// Once the lock is released, a waiting write goes through.
	done := make(chan error, 1)
	go func() { _, err := s.Update(t.Context(), c); done <- err }()
	testenv.WaitFor(t, "the write to wait for the lock", 5*time.Second, func() bool { return len(s.sem) == 1 })
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Update after unlock: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Update did not take the released lock")
	}
}

func TestFileStoreCloseIsIdempotent(t *testing.T) {
	s, err := OpenFileStore(filepath.Join(t.TempDir(), "credentials.json"), FileStoreOptions{PollInterval: fsPoll})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
	// Still usable, only no longer polling.
	if err := s.PutAll(t.Context(), []Credential{stOAuth(1, "")}, false); err != nil {
		t.Fatalf("PutAll after Close: %v", err)
	}
}

func TestOpen(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		url     string
		want    string // the store's type, or a substring of the error
		wantErr bool
	}{
		{"memory://", "*credentials.MemoryStore", false},
		{"memory:", "*credentials.MemoryStore", false},
		{"MEMORY://", "*credentials.MemoryStore", false},
		{"memory://host", "memory:// takes no", true},
		{"file://" + dir + "/credentials.json", "*credentials.FileStore", false},
		{"file://localhost" + dir + "/credentials.json", "*credentials.FileStore", false},
		{"file:///" + strings.TrimPrefix(dir, "/") + "/with%20space.json", "*credentials.FileStore", false},
		{"file://relative/credentials.json", "absolute path", true},
		{"file:relative.json", "absolute path", true},
		{"file://", "must be absolute", true},
		{"file://" + dir + "/c.json?mode=ro", "no query", true},
		{dir + "/credentials.json", "no scheme", true},
		{"", "empty", true},
		{"postgres://user:hunter2@127.0.0.1:1/creds?sslmode=disable&password=hunter2&connect_timeout=1", "cannot connect", true},
		{"postgresql://127.0.0.1:1/creds?connect_timeout=1", "cannot connect", true},
		{"s3://bucket/credentials.json", `unknown scheme "s3"`, true},
		{"file://user:hunter2@host/%zz", "not a valid URL", true},
	}
	for _, tc := range cases {
		t.Run(tc.url, func(t *testing.T) {
			s, err := Open(tc.url, OpenOptions{PollInterval: fsPoll})
			if tc.wantErr {
				if err == nil {
					_ = s.Close()
					t.Fatalf("Open succeeded, want an error containing %q", tc.want)
				}
				if !strings.HasPrefix(err.Error(), "credentials: ") || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("error %q, want one containing %q", err, tc.want)
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Errorf("error leaks the password: %q", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer s.Close()
			if got := fmt.Sprintf("%T", s); got != tc.want {
				t.Errorf("Open returned a %s, want %s", got, tc.want)
			}
			if err := s.PutAll(t.Context(), []Credential{stOAuth(1, "")}, false); err != nil {
				t.Errorf("PutAll: %v", err)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "with space.json")); err != nil {
		t.Errorf("a percent-encoded path was not decoded: %v", err)
	}
}

func TestOpenFileStoreReportsCorruptFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credentials.json")
	if err := os.WriteFile(path, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open("file://"+path, OpenOptions{}); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("Open of a corrupt file: %v, want an error naming %s", err, path)
	}
}

// ---- encryption at rest and file permissions

// fsSecretCred is an OAuth credential for company n whose tokens are long and recognisable,
// for searching files and logs.
func fsSecretCred(n int) Credential {
	c := stOAuth(n, fmt.Sprintf("tenant-%d", n))
	c.AccessToken = Secret(fmt.Sprintf("ACCESS-token-secret-value-%03d-abcdefghijkl", n))
	c.RefreshToken = Secret(fmt.Sprintf("REFRESH-token-secret-value-%03d-mnopqrstuvw", n))
	return c
}

func fsSecretKey(n int) Credential {
	c := stKey(n, IntegratedAPIKey)
	c.APIKey = Secret(fmt.Sprintf("APIKEY-secret-value-%03d-0123456789abcdef", n))
	return c
}

// fsEncrypted marshals creds in the encrypted format with keys.
func fsEncrypted(t *testing.T, keys [][]byte, creds ...Credential) []byte {
	t.Helper()
	data, err := marshalFile(creds, testSealer(t, keys...))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// fsDoc reads the encrypted document at path.
func fsDoc(t *testing.T, path string) encryptedFile {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f encryptedFile
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return f
}

// fsSealedKeyIDs returns the key ids of every sealed value in the file, and fails the test on
// a secret field that is not sealed.
func fsSealedKeyIDs(t *testing.T, path string) []string {
	t.Helper()
	f := fsDoc(t, path)
	if f.Encryption == nil || f.Encryption.Version != 1 {
		t.Fatalf("%s has no \"encryption\": {\"version\": 1} member", path)
	}
	var ids []string
	for i := range f.Credentials {
		for _, fld := range secretFields(&f.Credentials[i]) {
			if *fld.v == "" {
				continue
			}
			id, err := SealedKeyID(*fld.v)
			if err != nil {
				t.Fatalf("record %d %s is not sealed: %v", i, fld.name, err)
			}
			if !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
	}
	return ids
}

// fsEncodings lists ways a secret could show up in a file: raw, hex and base64 (standard and
// URL alphabets, at every alignment, minus the characters that depend on what follows).
func fsEncodings(secret []byte) []string {
	out := []string{string(secret), hex.EncodeToString(secret), strings.ToUpper(hex.EncodeToString(secret))}
	for off := 0; off < 3 && off < len(secret); off++ {
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
			e := strings.TrimRight(enc.EncodeToString(secret[off:]), "=")
			if len(e) > 8 {
				e = e[1 : len(e)-3]
			}
			out = append(out, e)
		}
	}
	return out
}

func TestFileStoreConformanceEncrypted(t *testing.T) {
	testStoreConformance(t, func(t *testing.T) Store {
		return fsOpen(t, filepath.Join(t.TempDir(), "credentials.json"), FileStoreOptions{Sealer: testSealer(t, testKey(1))})
	})
}

func TestFileStoreEncryptedRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credentials.json")
	sealer := testSealer(t, testKey(1))
	s := fsOpen(t, path, FileStoreOptions{Sealer: sealer})
	oauth := fsSecretCred(1)
	oauth.LastRefreshedAt = time.Date(2026, 11, 28, 11, 0, 0, 5, time.UTC)
	oauth.LastError = "timeout"
	standalone := fsSecretKey(3)
	standalone.Type = StandaloneAPIKey
	standalone.ExpiresAt = time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := s.PutAll(t.Context(), []Credential{oauth, fsSecretKey(2), standalone}, false); err != nil {
		t.Fatal(err)
	}
	if ids := fsSealedKeyIDs(t, path); !slices.Equal(ids, []string{KeyID(testKey(1))}) {
		t.Errorf("the file's values are sealed with keys %v, want only %s", ids, KeyID(testKey(1)))
	}
	// Everything but the secrets stays readable, in the plain format's shape.
	doc := fsDoc(t, path)
	if len(doc.Credentials) != 3 || doc.Credentials[0].CompanyID != stCompany(1) || doc.Credentials[0].TenantID != "tenant-1" ||
		doc.Credentials[0].Type != OAuth2 || doc.Credentials[2].Type != StandaloneAPIKey || doc.Credentials[0].LastError != "timeout" {
		t.Errorf("the encrypted document's metadata: %+v", doc.Credentials)
	}
	if m := fsMode(t, path); m != 0o600 {
		t.Errorf("mode %o, want 600", m)
	}
	before, _ := s.List(t.Context())
	s2 := fsOpen(t, path, FileStoreOptions{Sealer: sealer})
	after, _ := s2.List(t.Context())
	if !slices.EqualFunc(before, after, sameCredential) {
		t.Errorf("reopened = %v, want %v", after, before)
	}
	// Every write seals afresh: an update leaves no value as it was.
	old := fsDoc(t, path)
	if _, err := s.Update(t.Context(), fsGet(t, s, 2)); err != nil {
		t.Fatal(err)
	}
	if now := fsDoc(t, path); now.Credentials[0].RefreshToken == old.Credentials[0].RefreshToken {
		t.Errorf("a rewrite reused a sealed value (nonce not fresh)")
	}
}

// With a key set, nothing in the store's directory holds a token, an API key or the
// encryption key in any encoding, and neither does the log.
func TestFileStoreEncryptedFileHoldsNoSecret(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "credentials.json")
	var logs fsLog
	key := testKey(7)
	s := fsOpen(t, path, FileStoreOptions{Sealer: testSealer(t, key, testKey(8)),
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	creds := []Credential{fsSecretCred(1), fsSecretKey(2), fsSecretCred(3)}
	if err := s.PutAll(t.Context(), creds, false); err != nil {
		t.Fatal(err)
	}
	// Rotate a token, as a refresh would.
	c := fsGet(t, s, 1)
	c.RefreshToken = "REFRESH-token-rotated-value-0001-xyzxyzxyz"
	if _, err := s.Update(t.Context(), c); err != nil {
		t.Fatal(err)
	}
	secrets := [][]byte{key, testKey(8), []byte(base64.StdEncoding.EncodeToString(key)), []byte(c.RefreshToken)}
	for _, cr := range creds {
		for _, v := range []Secret{cr.AccessToken, cr.RefreshToken, cr.APIKey} {
			if v != "" {
				secrets = append(secrets, []byte(v))
			}
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var contents []string
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		contents = append(contents, e.Name()+": "+string(data))
	}
	contents = append(contents, "log: "+logs.String())
	for _, secret := range secrets {
		for _, enc := range fsEncodings(secret) {
			for _, text := range contents {
				if strings.Contains(text, enc) {
					name, _, _ := strings.Cut(text, ":")
					t.Errorf("%s holds a secret (as %q)", name, enc)
				}
			}
		}
	}
	// The check itself finds a plain file's secrets.
	plain := string(fsMarshal(t, creds...))
	if !strings.Contains(plain, fsEncodings([]byte(creds[1].APIKey))[0]) {
		t.Fatal("the search misses a plain secret")
	}
}

func TestFileStorePlainFileEncryptedOnFirstWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credentials.json")
	plain := fsMarshal(t, fsSecretCred(1), fsSecretKey(2))
	if err := os.WriteFile(path, plain, 0o600); err != nil {
		t.Fatal(err)
	}
	var logs fsLog
	sealer := testSealer(t, testKey(1))
	s := fsOpen(t, path, FileStoreOptions{Sealer: sealer, AllowPlain: true,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if !fsHas(s, 1, fsSecretCred(1).RefreshToken.Reveal()) {
		t.Fatal("the plain file was not read")
	}
	fsWaitPolls(t, s, 3*hashEveryPolls)
	if n := strings.Count(logs.String(), "not encrypted"); n != 1 {
		t.Errorf("logged the plain file %d times, want once:\n%s", n, logs.String())
	}
	if data, _ := os.ReadFile(path); !bytes.Equal(data, plain) {
		t.Fatal("the file changed before any write")
	}

	if _, err := s.Update(t.Context(), fsGet(t, s, 2)); err != nil {
		t.Fatal(err)
	}
	if ids := fsSealedKeyIDs(t, path); !slices.Equal(ids, []string{sealer.KeyID()}) {
		t.Errorf("after the first write the values are sealed with %v", ids)
	}
	stWaitFor(t, "the encryption to be logged", func() bool { return strings.Contains(logs.String(), "encrypted the credentials file") })
	if strings.Contains(logs.String(), "secret-value") {
		t.Errorf("a secret reached the log:\n%s", logs.String())
	}
	if s2, err := OpenFileStore(path, FileStoreOptions{}); err == nil {
		s2.Close()
		t.Error("the encrypted file opened without a key")
	}
	s3 := fsOpen(t, path, FileStoreOptions{Sealer: sealer})
	if !fsHas(s3, 1, fsSecretCred(1).RefreshToken.Reveal()) || fsGet(t, s3, 2).APIKey != fsSecretKey(2).APIKey {
		t.Error("the encrypted file does not hold what the plain one did")
	}
}

// An encrypted file without its key is an error naming the file and the key it needs, and
// the file is left untouched.
func TestFileStoreEncryptedFileNeedsItsKey(t *testing.T) {
	content := fsEncrypted(t, [][]byte{testKey(1)}, fsSecretCred(1), fsSecretKey(2))
	cases := []struct {
		name string
		keys [][]byte
		want []string
	}{
		{"no key", nil, []string{"encrypted", KeyID(testKey(1)), "PLEO_PROXY_ENCRYPTION_KEY"}},
		{"wrong key", [][]byte{testKey(2)}, []string{"not configured", KeyID(testKey(1)), KeyID(testKey(2)), "record 0"}},
		{"wrong keys", [][]byte{testKey(2), testKey(3)}, []string{"not configured", KeyID(testKey(1))}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "credentials.json")
			if err := os.WriteFile(path, content, 0o600); err != nil {
				t.Fatal(err)
			}
			mtime := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
			if err := os.Chtimes(path, mtime, mtime); err != nil {
				t.Fatal(err)
			}
			var opts FileStoreOptions
			if tc.keys != nil {
				opts.Sealer = testSealer(t, tc.keys...)
			}
			s, err := OpenFileStore(path, opts)
			if err == nil {
				s.Close()
				t.Fatal("OpenFileStore succeeded")
			}
			for _, w := range append(tc.want, path) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			data, _ := os.ReadFile(path)
			fi, _ := os.Stat(path)
			if !bytes.Equal(data, content) || !fi.ModTime().Equal(mtime) || fi.Mode().Perm() != 0o600 {
				t.Error("the file was touched")
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 1 {
				t.Errorf("Open left files behind: %v", entries)
			}
		})
	}
}

// A sealed value altered, or moved to another record or field, is refused at start-up,
// naming the record; so is a file whose "encryption" member was removed.
func TestFileStoreRefusesTamperedOrMovedValues(t *testing.T) {
	keys := [][]byte{testKey(1)}
	cases := []struct {
		name string
		edit func(f *encryptedFile)
		want string
	}{
		{"one flipped byte", func(f *encryptedFile) {
			b := []byte(f.Credentials[0].RefreshToken)
			b[len(b)-5] ^= 0x01
			f.Credentials[0].RefreshToken = string(b)
		}, "record 0"},
		{"api key moved to another company", func(f *encryptedFile) {
			f.Credentials[2].APIKey = f.Credentials[1].APIKey
		}, "record 2"},
		{"company ids swapped", func(f *encryptedFile) {
			f.Credentials[1].CompanyID, f.Credentials[2].CompanyID = f.Credentials[2].CompanyID, f.Credentials[1].CompanyID
		}, "fails authentication"},
		{"access and refresh token swapped", func(f *encryptedFile) {
			c := &f.Credentials[0]
			c.AccessToken, c.RefreshToken = c.RefreshToken, c.AccessToken
		}, "access_token"},
		{"oauth token moved to an api key", func(f *encryptedFile) {
			f.Credentials[1].APIKey = f.Credentials[0].AccessToken
			f.Credentials[1].CompanyID = f.Credentials[0].CompanyID
			f.Credentials = f.Credentials[1:]
		}, "api_key"},
		{"encryption member removed", func(f *encryptedFile) {
			f.Encryption = nil
		}, "sealed value but the file has no"},
		{"unknown version", func(f *encryptedFile) {
			f.Encryption.Version = 2
		}, "encryption version 2"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var f encryptedFile
			if err := json.Unmarshal(fsEncrypted(t, keys, fsSecretCred(1), fsSecretKey(2), fsSecretKey(3)), &f); err != nil {
				t.Fatal(err)
			}
			tc.edit(&f)
			var content []byte
			if f.Encryption == nil {
				content = fsMarshalRecords(t, f.Credentials)
			} else {
				content, _ = json.MarshalIndent(f, "", "  ")
			}
			path := filepath.Join(t.TempDir(), "credentials.json")
			if err := os.WriteFile(path, content, 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := OpenFileStore(path, FileStoreOptions{Sealer: testSealer(t, keys...)})
			if err == nil {
				s.Close()
				t.Fatal("OpenFileStore succeeded")
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not name %s and %q", err, path, tc.want)
			}
			if strings.Contains(err.Error(), "secret-value") {
				t.Errorf("error leaks a secret: %v", err)
			}
			if data, _ := os.ReadFile(path); !bytes.Equal(data, content) {
				t.Error("the file was touched")
			}
		})
	}
}

// fsMarshalRecords writes records as a plain document, values as they are.
func fsMarshalRecords(t *testing.T, records []Record) []byte {
	t.Helper()
	data, err := json.MarshalIndent(File{Credentials: records}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// Rotation: a file written with OLD reads with NEW,OLD; RotateKey rewrites it with NEW; then
// NEW alone reads it and OLD alone does not.
func TestFileStoreKeyRotation(t *testing.T) {
	oldKey, newKey := testKey(1), testKey(2)
	path := filepath.Join(t.TempDir(), "credentials.json")
	withOld := fsOpen(t, path, FileStoreOptions{Sealer: testSealer(t, oldKey)})
	if err := withOld.PutAll(t.Context(), []Credential{fsSecretCred(1), fsSecretKey(2)}, false); err != nil {
		t.Fatal(err)
	}
	want, _ := withOld.List(t.Context())
	written, _ := os.ReadFile(path)

	both := fsOpen(t, path, FileStoreOptions{Sealer: testSealer(t, newKey, oldKey)})
	if got, _ := both.List(t.Context()); !slices.EqualFunc(got, want, sameCredential) {
		t.Fatalf("NEW,OLD reads %v, want %v", got, want)
	}
	if data, _ := os.ReadFile(path); !bytes.Equal(data, written) {
		t.Fatal("opening with a new key rewrote the file")
	}
	n, err := both.RotateKey(t.Context())
	if err != nil || n != 2 {
		t.Fatalf("RotateKey = %d, %v; want 2", n, err)
	}
	if ids := fsSealedKeyIDs(t, path); !slices.Equal(ids, []string{KeyID(newKey)}) {
		t.Errorf("after RotateKey the values are sealed with %v, want %s", ids, KeyID(newKey))
	}
	withNew := fsOpen(t, path, FileStoreOptions{Sealer: testSealer(t, newKey)})
	if got, _ := withNew.List(t.Context()); !slices.EqualFunc(got, want, sameCredential) {
		t.Errorf("NEW alone reads %v, want %v", got, want)
	}
	if s, err := OpenFileStore(path, FileStoreOptions{Sealer: testSealer(t, oldKey)}); err == nil {
		s.Close()
		t.Error("OLD alone still opens the rotated file")
	} else if !strings.Contains(err.Error(), "not configured") {
		t.Errorf("OLD alone: %v", err)
	}
	// A process still holding only OLD keeps serving what it had, and says why it cannot reload.
	stWaitFor(t, "the old-key store's reload failure", func() bool {
		err := withOld.Ping(t.Context())
		return err != nil && strings.Contains(err.Error(), KeyID(newKey))
	})
	if !fsHas(withOld, 1, fsSecretCred(1).RefreshToken.Reveal()) {
		t.Error("the old-key store dropped its credentials")
	}

	plain := fsOpen(t, filepath.Join(t.TempDir(), "credentials.json"), FileStoreOptions{})
	if _, err := plain.RotateKey(t.Context()); err == nil || !strings.Contains(err.Error(), "no encryption key") {
		t.Errorf("RotateKey without a key = %v", err)
	}
}

// The Kubernetes secret-volume pattern with encryption on: a swapped link to a good file is
// picked up; one to a file that does not decrypt keeps the last good credentials, is
// reported by Ping and OnReloadError, and is never written over; a good one recovers.
func TestFileStoreEncryptedSymlinkSwapAndBadReload(t *testing.T) {
	dir := t.TempDir()
	keys := [][]byte{testKey(1)}
	n := 0
	swapTo := func(data []byte) {
		n++
		name := fmt.Sprintf("..2026_11_28_12_%02d_00.%d", n, n)
		if err := os.Mkdir(filepath.Join(dir, name), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "credentials.json"), data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(name, filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	withRefresh := func(rt string) Credential {
		c := fsSecretCred(1)
		c.RefreshToken = Secret(rt)
		return c
	}
	swapTo(fsEncrypted(t, keys, withRefresh("first")))
	path := filepath.Join(dir, "credentials.json")
	if err := os.Symlink(filepath.Join("..data", "credentials.json"), path); err != nil {
		t.Fatal(err)
	}
	var hook atomic.Int32
	s := fsOpen(t, path, FileStoreOptions{Sealer: testSealer(t, keys...), OnReloadError: func(error) { hook.Add(1) }})
	if !fsHas(s, 1, "first") {
		t.Fatal("the linked encrypted file was not read")
	}

	swapTo(fsEncrypted(t, keys, withRefresh("second")))
	stWaitFor(t, "the swapped link to be followed", func() bool { return fsHas(s, 1, "second") })

	tampered := fsEncrypted(t, keys, withRefresh("third"))
	i := bytes.Index(tampered, []byte(`"refresh_token": "v1.`)) + len(`"refresh_token": "v1.`) + KeyIDLength + 5
	// Another valid base64url character (flipping a bit could make an invalid one, a decoding
	// error instead of the authentication failure this case is about).
	if tampered[i] == 'A' {
		tampered[i] = 'B'
	} else {
		tampered[i] = 'A'
	}
	bad := []struct {
		name string
		data []byte
		want string
	}{
		{"another key", fsEncrypted(t, [][]byte{testKey(2)}, withRefresh("third")), "not configured"},
		{"a tampered value", tampered, "fails authentication"},
		{"truncated", fsEncrypted(t, keys, withRefresh("third"))[:100], "parse"},
	}
	for _, b := range bad {
		calls := hook.Load()
		swapTo(b.data)
		stWaitFor(t, "the reload failure of "+b.name, func() bool {
			err := s.Ping(t.Context())
			return err != nil && strings.Contains(err.Error(), b.want) && hook.Load() > calls
		})
		if !fsHas(s, 1, "second") {
			t.Fatalf("%s: the last good credentials are gone", b.name)
		}
		if _, err := s.Update(t.Context(), fsGet(t, s, 1)); err == nil {
			t.Fatalf("%s: a write went over a file that does not decrypt", b.name)
		}
		if fi, err := os.Lstat(path); err != nil || fi.Mode()&os.ModeSymlink == 0 {
			t.Fatalf("%s: the link was replaced", b.name)
		}
	}

	swapTo(fsEncrypted(t, keys, withRefresh("fixed")))
	stWaitFor(t, "recovery", func() bool { return fsHas(s, 1, "fixed") && s.Ping(t.Context()) == nil })
}

func TestCheckFileMode(t *testing.T) {
	const path = "/var/lib/pleo-auth-proxy/credentials.json"
	cases := []struct {
		mode        os.FileMode
		owner, euid int
		projected   bool   // in a Kubernetes secret volume
		want        string // "" for accepted
	}{
		{0o600, 1000, 1000, false, ""},
		{0o400, 1000, 1000, false, ""},
		{0o700, 1000, 1000, false, ""},
		{0o640, 1000, 1000, false, "group (read)"},
		{0o660, 1000, 1000, false, "group (read, write)"},
		{0o644, 1000, 1000, false, "group (read) and others (read)"},
		{0o604, 1000, 1000, false, "others (read)"},
		{0o602, 1000, 1000, false, "others (write)"},
		{0o610, 1000, 1000, false, "group (execute)"},
		{0o777, 1000, 1000, false, "group (read, write, execute) and others (read, write, execute)"},
		// Root-owned, read by a non-root process: group read at most.
		{0o440, 0, 65532, false, ""},
		{0o640, 0, 65532, false, ""},
		{0o400, 0, 65532, false, ""},
		{0o644, 0, 65532, false, "others (read)"},
		{0o660, 0, 65532, false, "group (write)"},
		{0o444, 0, 65532, false, "others (read)"},
		// Root reading its own file: as strict as anyone.
		{0o440, 0, 0, false, "group (read)"},
		{0o600, 0, 0, false, ""},
		// Another non-root user's file.
		{0o440, 1000, 65532, false, "group (read)"},
		{0o600, 1000, 0, false, ""},
		// A Kubernetes secret volume (root-owned): read for group and others, never write.
		{0o444, 0, 65532, true, ""},
		{0o644, 0, 65532, true, ""},
		{0o440, 0, 65532, true, ""},
		{0o444, 0, 0, true, ""},
		{0o666, 0, 65532, true, "group (write) and others (write)"},
		{0o445, 0, 65532, true, "others (execute)"},
		// The layout alone, on a file root does not own, earns nothing.
		{0o444, 1000, 1000, true, "group (read) and others (read)"},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%04o owner %d euid %d projected %v", tc.mode, tc.owner, tc.euid, tc.projected), func(t *testing.T) {
			err := checkFileMode(path, tc.mode, tc.owner, tc.euid, tc.projected)
			if tc.want == "" {
				if err != nil {
					t.Errorf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			fix := "chmod 600 " + path
			if tc.projected {
				fix = "defaultMode to 0440"
			}
			for _, w := range []string{fmt.Sprintf("mode %04o", tc.mode), tc.want, fix} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// The kubelet's atomic-writer layout of a secret volume mounted with defaultMode 0444 (the
// chart's, for pods without an fsGroup) is accepted; the same mode outside it is not.
func TestFileStoreAcceptsKubernetesSecretVolume(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Unavailable(t, "needs root: the kubelet's files are owned by root")
	}
	dir := t.TempDir()
	ts := filepath.Join(dir, "..2026_11_28_12_00_00.1")
	if err := os.Mkdir(ts, 0o755); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(ts, "credentials.json")
	if err := os.WriteFile(target, fsMarshal(t, fsSecretKey(1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(target, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Base(ts), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "credentials.json")
	if err := os.Symlink(filepath.Join("..data", "credentials.json"), path); err != nil {
		t.Fatal(err)
	}
	s := fsOpen(t, path, FileStoreOptions{})
	if fsGet(t, s, 1).APIKey != fsSecretKey(1).APIKey {
		t.Error("the secret volume's file was not read")
	}
	// The same file linked from elsewhere is held to the strict rule.
	other := filepath.Join(t.TempDir(), "credentials.json")
	if err := os.Symlink(target, other); err != nil {
		t.Fatal(err)
	}
	if s, err := OpenFileStore(other, FileStoreOptions{}); err == nil {
		s.Close()
		t.Error("a 0444 file outside a secret volume was accepted")
	} else if !strings.Contains(err.Error(), "chmod 600 "+other) {
		t.Errorf("error %q", err)
	}
	// Writable by others is refused even there.
	if err := os.Chmod(target, 0o666); err != nil {
		t.Fatal(err)
	}
	if s, err := OpenFileStore(path, FileStoreOptions{}); err == nil {
		s.Close()
		t.Error("a 0666 file in a secret volume was accepted")
	} else if !strings.Contains(err.Error(), "defaultMode") {
		t.Errorf("error %q", err)
	}
}

// A credentials file group or others may access is refused at start-up (following links),
// on reload, and before a write; the file is never changed.
func TestFileStoreRefusesLoosePermissions(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Log("running as root: checking files root owns itself (the strict rule)")
	}
	cases := []struct {
		mode os.FileMode
		link bool
		ok   bool
	}{
		{0o600, false, true},
		{0o400, false, true},
		{0o600, true, true},
		{0o644, false, false},
		{0o640, false, false},
		{0o660, false, false},
		{0o604, false, false},
		{0o602, false, false},
		{0o620, false, false},
		{0o644, true, false},
	}
	for _, tc := range cases {
		name := fmt.Sprintf("%04o", tc.mode)
		if tc.link {
			name += " through a symlink"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			target := filepath.Join(dir, "credentials.json")
			content := fsMarshal(t, fsSecretKey(1))
			if err := os.WriteFile(target, content, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(target, tc.mode); err != nil {
				t.Fatal(err)
			}
			path := target
			if tc.link {
				path = filepath.Join(dir, "link.json")
				if err := os.Symlink("credentials.json", path); err != nil {
					t.Fatal(err)
				}
			}
			s, err := OpenFileStore(path, FileStoreOptions{PollInterval: fsPoll})
			if tc.ok {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				s.Close()
				return
			}
			if err == nil {
				s.Close()
				t.Fatal("OpenFileStore accepted the file")
			}
			for _, w := range []string{path, fmt.Sprintf("mode %04o", tc.mode), "chmod 600 " + path} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if data, _ := os.ReadFile(target); !bytes.Equal(data, content) || fsMode(t, target) != tc.mode {
				t.Error("the file was changed")
			}
		})
	}

	t.Run("changed while running", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "credentials.json")
		var hook atomic.Int32
		s := fsOpen(t, path, FileStoreOptions{OnReloadError: func(error) { hook.Add(1) }})
		if err := s.PutAll(t.Context(), []Credential{fsSecretKey(1)}, false); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, 0o644); err != nil {
			t.Fatal(err)
		}
		stWaitFor(t, "the reload failure", func() bool {
			err := s.Ping(t.Context())
			return err != nil && strings.Contains(err.Error(), "mode 0644") && hook.Load() > 0
		})
		if fsGet(t, s, 1).APIKey != fsSecretKey(1).APIKey {
			t.Error("the last good credential is gone")
		}
		if _, err := s.Update(t.Context(), fsGet(t, s, 1)); err == nil || !strings.Contains(err.Error(), "mode 0644") {
			t.Errorf("Update over a 0644 file = %v, want a refusal naming the mode", err)
		}
		if m := fsMode(t, path); m != 0o644 {
			t.Errorf("mode %o: the refused write changed the file", m)
		}
		// One failure is counted once, not on every poll.
		calls := hook.Load()
		fsWaitPolls(t, s, 3*hashEveryPolls)
		if hook.Load() != calls {
			t.Errorf("OnReloadError called %d more times for the same file", hook.Load()-calls)
		}
		if err := os.Chmod(path, 0o600); err != nil {
			t.Fatal(err)
		}
		stWaitFor(t, "recovery", func() bool { return s.Ping(t.Context()) == nil })
		if _, err := s.Update(t.Context(), fsGet(t, s, 1)); err != nil {
			t.Errorf("Update after chmod 600: %v", err)
		}
	})
}

// A file holding a time encoding/json cannot write (after the year 9999 in UTC) is refused at
// start-up: loaded, it would make every later write fail.
func TestFileStoreRefusesUnwritableTimes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credentials.json")
	content := `{"credentials": [{"company_id": "` + stCompany(1) + `", "type": "integrated_api_key", "api_key": "k", "expires_at": "9999-12-31T23:30:00-01:00"}]}`
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := OpenFileStore(path, FileStoreOptions{}); err == nil {
		s.Close()
		t.Fatal("OpenFileStore accepted the file")
	} else if !strings.Contains(err.Error(), "expires_at is outside the years") || !strings.Contains(err.Error(), path) {
		t.Errorf("error %q", err)
	}
}

func TestOpenPassesEncryptionAndReloadHook(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credentials.json")
	var hook atomic.Int32
	s, err := Open("file://"+path, OpenOptions{PollInterval: fsPoll, Sealer: testSealer(t, testKey(1)),
		OnReloadError: func(error) { hook.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.PutAll(t.Context(), []Credential{fsSecretKey(1)}, false); err != nil {
		t.Fatal(err)
	}
	if ids := fsSealedKeyIDs(t, path); !slices.Equal(ids, []string{KeyID(testKey(1))}) {
		t.Errorf("Open's store sealed with %v", ids)
	}
	fsReplace(t, path, []byte("{"))
	stWaitFor(t, "OnReloadError", func() bool { return hook.Load() > 0 })
	if _, ok := s.(KeyRotator); !ok {
		t.Error("the file store is not a KeyRotator")
	}
}

// With an encryption key (and not AllowPlain), a plain file holding credentials is refused: at
// start-up the store serves none and fails Ping; while running it keeps the last good
// credentials and fails Ping; nothing is written over it; an encrypted file put back is
// served again. An empty plain document holds no secret and is accepted.
func TestFileStorePlainFileRefusedWithKey(t *testing.T) {
	sealer := testSealer(t, testKey(1))
	plain := fsMarshal(t, fsSecretCred(1), fsSecretKey(2))

	t.Run("at start-up", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "credentials.json")
		if err := os.WriteFile(path, plain, 0o600); err != nil {
			t.Fatal(err)
		}
		var logs fsLog
		s := fsOpen(t, path, FileStoreOptions{Sealer: sealer, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		if err := s.Ping(t.Context()); !errors.Is(err, ErrPlaintextWithKey) || !strings.Contains(err.Error(), "rotate-key") ||
			!strings.Contains(err.Error(), "serving no credentials") {
			t.Fatalf("Ping = %v, want ErrPlaintextWithKey naming the fix", err)
		}
		if _, err := s.Get(t.Context(), stCompany(1)); !errors.Is(err, ErrNotFound) {
			t.Fatalf("a plaintext credential was served: %v", err)
		}
		if err := s.PutAll(t.Context(), []Credential{fsSecretKey(3)}, false); !errors.Is(err, ErrPlaintextWithKey) {
			t.Fatalf("PutAll over the plain file = %v", err)
		}
		if data, _ := os.ReadFile(path); !bytes.Equal(data, plain) {
			t.Fatal("the plain file was written over")
		}
		if !strings.Contains(logs.String(), "credentials migrate --from file://"+path) {
			t.Errorf("the log does not name the fix:\n%s", logs.String())
		}
		if strings.Contains(logs.String(), "secret-value") {
			t.Errorf("a secret reached the log")
		}
		// The operator encrypts it on purpose: the running store picks it up.
		fsReplace(t, path, fsEncrypted(t, [][]byte{testKey(1)}, fsSecretCred(1), fsSecretKey(2)))
		stWaitFor(t, "the encrypted file to be served", func() bool {
			return s.Ping(t.Context()) == nil && fsHas(s, 1, fsSecretCred(1).RefreshToken.Reveal())
		})
	})

	t.Run("while running", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "credentials.json")
		encrypted := fsEncrypted(t, [][]byte{testKey(1)}, fsSecretCred(1))
		if err := os.WriteFile(path, encrypted, 0o600); err != nil {
			t.Fatal(err)
		}
		s := fsOpen(t, path, FileStoreOptions{Sealer: sealer})
		other := fsSecretCred(1)
		other.RefreshToken = "REFRESH-token-from-a-plaintext-file-0000"
		plain := fsMarshal(t, other, fsSecretKey(2))
		fsReplace(t, path, plain)
		stWaitFor(t, "the refusal", func() bool { return errors.Is(s.Ping(t.Context()), ErrPlaintextWithKey) })
		if !fsHas(s, 1, fsSecretCred(1).RefreshToken.Reveal()) {
			t.Fatal("the last good credential is not served")
		}
		if _, err := s.Get(t.Context(), stCompany(2)); !errors.Is(err, ErrNotFound) {
			t.Fatalf("a plaintext credential was served: %v", err)
		}
		if _, err := s.Update(t.Context(), fsGet(t, s, 1)); err == nil {
			t.Fatal("a write over the plain file succeeded")
		}
		if data, _ := os.ReadFile(path); !bytes.Equal(data, plain) {
			t.Fatal("the plain file was written over")
		}
		fsReplace(t, path, encrypted)
		stWaitFor(t, "readiness after the restore", func() bool { return s.Ping(t.Context()) == nil })
	})

	t.Run("an empty plain document", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "credentials.json")
		if err := os.WriteFile(path, []byte(`{"credentials": []}`), 0o600); err != nil {
			t.Fatal(err)
		}
		s := fsOpen(t, path, FileStoreOptions{Sealer: sealer})
		if err := s.Ping(t.Context()); err != nil {
			t.Fatal(err)
		}
	})
}

// A file sealed with a key the store does not have fails to reload until the Sealer gets the
// key (a reloaded PLEO_PROXY_ENCRYPTION_KEY_FILE), even though the file does not change
// again; writes then seal with the newest key.
func TestFileStoreReadsAfterSealerSetKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credentials.json")
	if err := os.WriteFile(path, fsEncrypted(t, [][]byte{testKey(1)}, fsSecretCred(1)), 0o600); err != nil {
		t.Fatal(err)
	}
	sealer := testSealer(t, testKey(1))
	s := fsOpen(t, path, FileStoreOptions{Sealer: sealer})
	next := fsSecretCred(1)
	next.RefreshToken = "REFRESH-token-sealed-with-the-new-key-01"
	fsReplace(t, path, fsEncrypted(t, [][]byte{testKey(2), testKey(1)}, next))
	stWaitFor(t, "the unknown key to fail the reload", func() bool { return errors.Is(s.Ping(t.Context()), ErrSealedUnknownKey) })
	fsWaitPolls(t, s, 2)
	if err := sealer.SetKeys([][]byte{testKey(2), testKey(1)}); err != nil {
		t.Fatal(err)
	}
	stWaitFor(t, "the file to be read with the new key", func() bool {
		return s.Ping(t.Context()) == nil && fsHas(s, 1, next.RefreshToken.Reveal())
	})
	if _, err := s.Update(t.Context(), fsGet(t, s, 1)); err != nil {
		t.Fatal(err)
	}
	if ids := fsSealedKeyIDs(t, path); !slices.Equal(ids, []string{KeyID(testKey(2))}) {
		t.Fatalf("written with keys %v, want the newest", ids)
	}
	if err := sealer.SetKeys(nil); err == nil || sealer.KeyID() != KeyID(testKey(2)) {
		t.Fatalf("SetKeys(nil) = %v and the keys changed", err)
	}
}
