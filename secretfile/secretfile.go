// Package secretfile keeps secrets read from files current while the process runs: the
// PLEO_PROXY_*_FILE variables, typically a Kubernetes Secret mounted as a volume, which the
// kubelet updates in place by swapping a symbolic link (..data) to a new directory.
//
// A Watcher polls every watched file (a stat, following symbolic links, every interval; a read
// and hash of it every few polls anyway, to catch a same-size rewrite within the file system's
// timestamp granularity). When a file's content changes, the new content is parsed and
// validated; only then does the Value change. A file that is removed, empty or does not parse
// keeps the old value, and is logged and reported once per distinct content. Nothing logged
// or reported holds a secret: the parse functions' errors must not either.
//
// Consumers read the current value with Value.Load (or are told of a new one through
// Value.OnChange) instead of keeping a copy taken at start-up.
package secretfile

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultInterval is how often a Watcher polls when Options.Interval is zero.
const DefaultInterval = 2 * time.Second

// hashEveryPolls makes every so many polls read and hash each file even when its stat data
// is unchanged.
const hashEveryPolls = 4

// Results of a reload attempt, as Options.OnReload receives them.
const (
	ResultSuccess = "success"
	ResultError   = "error"
)

// Options configures NewWatcher. The zero value is usable.
type Options struct {
	// Interval is how often every file is checked; zero or negative means DefaultInterval.
	Interval time.Duration
	// Logger receives one info line per reload and one warning per failed one (the secret's
	// name and the file's path, never its content); nil discards.
	Logger *slog.Logger
	// OnReload, if set, is called for every reload attempt of a changed file, with the
	// secret's name and ResultSuccess or ResultError (for a metric). It must not block.
	OnReload func(secret, result string)
}

// Watcher polls the files of the Values made by Watch. Run it with Run.
type Watcher struct {
	interval time.Duration
	logger   *slog.Logger
	onReload func(secret, result string)

	mu    sync.Mutex // guards files and serialises checks
	files []checker
	// polls counts finished polls, so tests can wait for some to pass.
	polls atomic.Int64
}

// checker is a watched file: check looks at it once.
type checker interface {
	check(force bool)
}

// NewWatcher returns a Watcher; nothing is polled until Run.
func NewWatcher(opts Options) *Watcher {
	w := &Watcher{interval: opts.Interval, logger: opts.Logger, onReload: opts.OnReload}
	if w.interval <= 0 {
		w.interval = DefaultInterval
	}
	if w.logger == nil {
		w.logger = slog.New(slog.DiscardHandler)
	}
	if w.onReload == nil {
		w.onReload = func(string, string) {}
	}
	return w
}

// Run polls every watched file each interval until ctx ends.
func (w *Watcher) Run(ctx context.Context) {
	t := time.NewTicker(w.interval)
	defer t.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w.Check(n%hashEveryPolls == 0)
	}
}

// Check looks at every watched file once, as a poll does; with force it reads and hashes each
// even when its stat data is unchanged. Run calls it; tests may too.
func (w *Watcher) Check(force bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, f := range w.files {
		f.check(force)
	}
	w.polls.Add(1)
}

// Polls returns how many polls have finished.
func (w *Watcher) Polls() int64 { return w.polls.Load() }

// Value is the current value of one secret. Load is safe for concurrent use and never blocks.
type Value[T any] struct {
	cur atomic.Pointer[T]

	// The fields below are used only under the Watcher's mu (or before the Value is shared).
	name    string
	path    string
	parse   func([]byte) (T, error)
	w       *Watcher
	seen    fingerprint // the file as last read, parsed or not
	failed  bool        // seen did not parse (or the file is missing)
	loggedF string      // the last failure logged

	hookMu sync.Mutex
	before []func(T)
	after  []func(T)
}

// Fixed returns a Value that never changes: a secret given directly in the environment.
func Fixed[T any](v T) *Value[T] {
	x := &Value[T]{}
	x.cur.Store(&v)
	return x
}

// Watch returns a Value holding initial (what the configuration read at start-up), kept
// current from the file at path by w; name is the secret's name in logs and in
// Options.OnReload (a small fixed set, e.g. "oauth_client_secret"). With an empty path it is
// Fixed(initial). parse turns the file's content into a value, or an error that names the
// problem without quoting the content.
//
// Watch reads the file once at once: if it changed since the configuration read it and
// parses, its value replaces initial.
func Watch[T any](w *Watcher, name, path string, initial T, parse func([]byte) (T, error)) *Value[T] {
	v := Fixed(initial)
	if path == "" {
		return v
	}
	v.name, v.path, v.parse, v.w = name, path, parse, w
	if fp, data, err := read(path); err == nil {
		v.seen = fp
		if x, err := parse(data); err == nil {
			v.cur.Store(&x)
		}
	}
	w.mu.Lock()
	w.files = append(w.files, v)
	w.mu.Unlock()
	return v
}

// Load returns the current value.
func (v *Value[T]) Load() T { return *v.cur.Load() }

// BeforeChange registers fn, called with a new value after it parsed and before Load returns
// it (to redact it from logs before anything can log it). It runs on the polling goroutine
// and must not block.
func (v *Value[T]) BeforeChange(fn func(T)) {
	v.hookMu.Lock()
	defer v.hookMu.Unlock()
	v.before = append(v.before, fn)
}

// OnChange registers fn, called with a new value once Load returns it. It runs on the polling
// goroutine and must not block.
func (v *Value[T]) OnChange(fn func(T)) {
	v.hookMu.Lock()
	defer v.hookMu.Unlock()
	v.after = append(v.after, fn)
}

// fingerprint identifies one version of a file: its stat data and, when read, the SHA-256 of
// its content.
type fingerprint struct {
	exists  bool
	size    int64
	modTime time.Time
	dev     uint64
	ino     uint64
	sum     [sha256.Size]byte
}

func (a fingerprint) sameStat(b fingerprint) bool {
	return a.exists == b.exists && (!a.exists || a.size == b.size && a.modTime.Equal(b.modTime) && a.dev == b.dev && a.ino == b.ino)
}

func statOf(fi os.FileInfo) fingerprint {
	fp := fingerprint{exists: true, size: fi.Size(), modTime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		fp.dev, fp.ino = uint64(st.Dev), uint64(st.Ino)
	}
	return fp
}

// maxFileBytes bounds what a secret file may hold.
const maxFileBytes = 1 << 20

// read reads the file at path (following symbolic links) and fingerprints it.
func read(path string) (fingerprint, []byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return fingerprint{}, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fingerprint{}, nil, err
	}
	fp := statOf(fi)
	data, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return fp, nil, err
	}
	fp.sum = sha256.Sum256(data)
	if len(data) > maxFileBytes {
		return fp, nil, fmt.Errorf("the file is larger than %d KiB", maxFileBytes>>10)
	}
	return fp, data, nil
}

// check is one poll of the file.
func (v *Value[T]) check(force bool) {
	st, err := os.Stat(v.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if v.seen.exists || !v.failed {
			v.seen = fingerprint{}
			v.fail(errors.New("the file was removed"), true)
		}
		return
	case err != nil:
		v.fail(err, false) // counted and logged once per distinct error
		return
	}
	if !force && statOf(st).sameStat(v.seen) {
		return
	}
	fp, data, err := read(v.path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return // removed since the stat: the next poll sees it
		}
		v.seen = fp
		v.fail(err, true)
		return
	}
	if v.seen.exists && fp.sum == v.seen.sum {
		v.seen = fp // touched, or rewritten with the same content
		return
	}
	v.seen = fp
	x, err := v.parse(data)
	if err != nil {
		v.fail(err, true)
		return
	}
	v.hookMu.Lock()
	before, after := v.before, v.after
	v.hookMu.Unlock()
	for _, fn := range before {
		fn(x)
	}
	v.cur.Store(&x)
	for _, fn := range after {
		fn(x)
	}
	v.failed, v.loggedF = false, ""
	v.w.onReload(v.name, ResultSuccess)
	v.w.logger.Info("reloaded a secret file", "secret", v.name, "path", v.path)
}

// fail keeps the current value and reports err: counted when always is set (a new version of
// the file failed) or the failure is new, logged when it is new.
func (v *Value[T]) fail(err error, always bool) {
	v.failed = true
	msg := err.Error()
	if always || msg != v.loggedF {
		v.w.onReload(v.name, ResultError)
	}
	if msg != v.loggedF {
		v.loggedF = msg
		v.w.logger.Warn("cannot reload a secret file; keeping the current value", "secret", v.name, "path", v.path, "error", msg)
	}
}
