package credentials

import (
	"bytes"
	"context"
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
)

// fsPoll is the poll interval of the file store tests.
const fsPoll = 20 * time.Millisecond

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
	time.Sleep(6 * fsPoll)
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
	if err := os.WriteFile(path, fsMarshal(t, stOAuth(1, "")), 0o644); err != nil {
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
	time.Sleep(3 * hashEveryPolls * fsPoll)
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
	time.Sleep(3 * hashEveryPolls * fsPoll)
	if n := failures(); n != 1 {
		t.Errorf("logged %d failures for one bad file, want 1:\n%s", n, logs.String())
	}
	fsReplace(t, path, []byte(`{"credentials": [`))
	stWaitFor(t, "the second failure", func() bool {
		err := s.LastReloadError()
		return err != nil && !strings.Contains(err.Error(), "company_id")
	})
	time.Sleep(3 * fsPoll)
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
	// A write starts the file again, from what is on disk (nothing).
	if err := s.PutAll(t.Context(), []Credential{stOAuth(2, "")}, false); err != nil {
		t.Fatal(err)
	}
	if err := s.Ping(t.Context()); err != nil {
		t.Errorf("Ping after the file was written again: %v", err)
	}
	if list, _ := s.List(t.Context()); !slices.Equal(stIDs(list), []string{stCompany(2)}) {
		t.Errorf("List = %v, want what the file holds", list)
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
	time.Sleep(10 * time.Millisecond)
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
		{"postgres://user:hunter2@db.example/creds?sslmode=require&password=hunter2", "not supported yet", true},
		{"postgresql://db.example/creds", "not supported yet", true},
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
