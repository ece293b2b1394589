package secretfile

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/testenv"
)

// counts records Options.OnReload calls.
type counts struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counts) add(secret, result string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[secret+"/"+result]++
}

func (c *counts) get(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[key]
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// parseSecret trims and refuses empty content, as the configuration does.
func parseSecret(data []byte) (string, error) {
	s := strings.TrimSpace(string(data))
	if s == "" {
		return "", errors.New("the file is empty")
	}
	if strings.Contains(s, "garbage") {
		return "", errors.New("not a valid secret")
	}
	return s, nil
}

func writeRename(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func newTestWatcher(c *counts, logs *syncBuffer) *Watcher {
	return NewWatcher(Options{Logger: slog.New(slog.NewTextHandler(logs, nil)), OnReload: c.add})
}

func TestWatchReloadsOnWriteAndRename(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secret")
	writeRename(t, path, "one\n")
	var c counts
	var logs syncBuffer
	w := newTestWatcher(&c, &logs)
	v := Watch(w, "oauth_client_secret", path, "one", parseSecret)
	var order []string
	v.BeforeChange(func(s string) { order = append(order, "before:"+s+":current="+v.Load()) })
	v.OnChange(func(s string) { order = append(order, "after:"+s+":current="+v.Load()) })

	w.Check(false)
	if v.Load() != "one" || c.get("oauth_client_secret/success") != 0 {
		t.Fatalf("unchanged file: %q, %v", v.Load(), c.n)
	}
	writeRename(t, path, "two\n")
	w.Check(false)
	if v.Load() != "two" || c.get("oauth_client_secret/success") != 1 {
		t.Fatalf("after the rename: %q, %v", v.Load(), c.n)
	}
	if want := []string{"before:two:current=one", "after:two:current=two"}; strings.Join(order, ",") != strings.Join(want, ",") {
		t.Fatalf("hooks ran %v, want %v", order, want)
	}
	// The same content again (a new inode) is no reload.
	writeRename(t, path, "two\n")
	w.Check(false)
	if c.get("oauth_client_secret/success") != 1 {
		t.Fatalf("same content counted as a reload: %v", c.n)
	}
	if strings.Contains(logs.String(), "two") || strings.Contains(logs.String(), "one") {
		t.Fatalf("a secret reached the log:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "reloaded a secret file") {
		t.Fatalf("no reload logged:\n%s", logs.String())
	}
}

// The kubelet's layout: path -> ..data/secret, ..data -> a timestamped directory, swapped
// by renaming a new symbolic link over ..data.
func TestWatchFollowsKubernetesSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	mkVersion := func(name, content string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "secret"), []byte(content), 0o400); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(name, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	mkVersion("..2026_12_04_01", "first")
	path := filepath.Join(dir, "secret")
	if err := os.Symlink(filepath.Join("..data", "secret"), path); err != nil {
		t.Fatal(err)
	}
	var c counts
	var logs syncBuffer
	w := newTestWatcher(&c, &logs)
	v := Watch(w, "admin_token", path, "first", parseSecret)
	mkVersion("..2026_12_04_02", "second")
	w.Check(false)
	if v.Load() != "second" || c.get("admin_token/success") != 1 {
		t.Fatalf("after the swap: %q, %v", v.Load(), c.n)
	}
}

// Garbage, an empty file and a removed file keep the current value; each is counted and
// logged (once), and a good file afterwards is taken.
func TestWatchKeepsTheValueOnBadFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secret")
	writeRename(t, path, "good")
	var c counts
	var logs syncBuffer
	w := newTestWatcher(&c, &logs)
	v := Watch(w, "client_tokens", path, "good", parseSecret)
	changed := 0
	v.OnChange(func(string) { changed++ })
	for i, bad := range []string{"garbage", "", "  \n"} {
		writeRename(t, path, bad)
		w.Check(false)
		w.Check(true)
		if v.Load() != "good" || c.get("client_tokens/error") != i+1 || changed != 0 {
			t.Fatalf("%q: value %q, counts %v, changes %d", bad, v.Load(), c.n, changed)
		}
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	w.Check(false)
	w.Check(false)
	if v.Load() != "good" || c.get("client_tokens/error") != 4 {
		t.Fatalf("removed: value %q, counts %v", v.Load(), c.n)
	}
	if n := strings.Count(logs.String(), "was removed"); n != 1 {
		t.Fatalf("the removal logged %d times:\n%s", n, logs.String())
	}
	writeRename(t, path, "better")
	w.Check(false)
	if v.Load() != "better" || changed != 1 || c.get("client_tokens/success") != 1 {
		t.Fatalf("recovered: value %q, counts %v", v.Load(), c.n)
	}
}

// A same-size rewrite with the same modification time and inode is caught by a forced check.
func TestWatchForcedCheckHashes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(path, []byte("aaaa"), 0o600); err != nil {
		t.Fatal(err)
	}
	w := NewWatcher(Options{})
	v := Watch(w, "encryption_key", path, "aaaa", parseSecret)
	fi, _ := os.Stat(path)
	if err := os.WriteFile(path, []byte("bbbb"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	w.Check(false)
	if v.Load() != "aaaa" {
		t.Fatalf("the stat check saw %q (the test does not hide the change)", v.Load())
	}
	w.Check(true)
	if v.Load() != "bbbb" {
		t.Fatalf("the forced check kept %q", v.Load())
	}
}

func TestWatchWithoutPathIsFixed(t *testing.T) {
	w := NewWatcher(Options{})
	v := Watch(w, "admin_token", "", "env-value", parseSecret)
	w.Check(true)
	if v.Load() != "env-value" || len(w.files) != 0 {
		t.Fatalf("%q, %d files watched", v.Load(), len(w.files))
	}
}

func TestRunPolls(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secret")
	writeRename(t, path, "one")
	w := NewWatcher(Options{Interval: 5 * time.Millisecond})
	v := Watch(w, "admin_token", path, "one", parseSecret)
	go w.Run(t.Context())
	writeRename(t, path, "two")
	testenv.WaitFor(t, "Run to pick the change up", 5*time.Second, func() bool { return v.Load() == "two" })
}
