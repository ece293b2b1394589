package credentials

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultPollInterval is how often a FileStore looks for changes made by others when
// FileStoreOptions.PollInterval is zero. The contract promises pick-up within 10 seconds.
const DefaultPollInterval = 2 * time.Second

// FileStoreOptions configures OpenFileStore. The zero value is usable.
type FileStoreOptions struct {
	// PollInterval is how often the file is checked for changes made by other processes;
	// zero or negative means DefaultPollInterval.
	PollInterval time.Duration
	// Logger receives reload failures (once per distinct failure) and recoveries; nil
	// discards. Nothing logged contains a secret.
	Logger *slog.Logger
	// OnReloadError, if set, is called on every failed attempt to reload the file (for a
	// metric). It runs on the polling goroutine and must not block.
	OnReloadError func(error)
}

// FileStore is the file:// store: one JSON document (see Parse and Marshal) holding every
// credential, for a single replica plus the occasional `credentials import` process.
//
// Reads come from an immutable in-memory snapshot and take no lock. Every write is a
// read-modify-write under an exclusive flock on path+".lock": the file is re-read under the
// lock, changed, written to a temporary file in the same directory (mode 0600, fsynced) and
// renamed over path, then the directory is fsynced; so concurrent processes never lose each
// other's updates, and a crash leaves either the old file or the new one. Writing replaces a
// symbolic link at path with a regular file.
//
// A goroutine polls the file for changes made by others (the Kubernetes secret-mount pattern
// of an atomically replaced symbolic link included) and swaps the snapshot in; a file that no
// longer parses keeps the last good snapshot and makes Ping fail until it is fixed.
type FileStore struct {
	path     string
	lockPath string
	interval time.Duration
	logger   *slog.Logger
	onReload func(error)

	// encode and decode turn credentials into the file's bytes and back. OpenFileStore sets
	// them in one place, so that an encrypting envelope can replace them.
	encode func([]Credential) ([]byte, error)
	decode func([]byte) ([]Credential, error)

	// beforeRename, when set (by tests), runs after the temporary file is written and
	// synced and before it is renamed over path; an error aborts the write there, as a
	// crash would.
	beforeRename func(tmpPath string) error

	snap atomic.Pointer[storeSnapshot]
	subs subscriberSet

	// sem serialises this process's writes and reloads (a channel so waiting honours a
	// context). The fields below it are guarded by it.
	sem        chan struct{}
	seen       fileFingerprint // the file as last read, parsed or not
	seenErr    error           // why seen did not parse, or nil
	lastLogged string          // the last reload failure logged

	errMu     sync.Mutex
	reloadErr error // the current reload failure, reported by Ping

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

var _ Store = (*FileStore)(nil)

// fileFingerprint identifies one version of the file: its stat data and, when read, the
// SHA-256 of its content.
type fileFingerprint struct {
	exists  bool
	size    int64
	modTime time.Time
	dev     uint64
	ino     uint64
	sum     [sha256.Size]byte
}

// sameStat reports whether a and b look like the same file version without reading it.
func (a fileFingerprint) sameStat(b fileFingerprint) bool {
	if a.exists != b.exists {
		return false
	}
	return !a.exists || a.size == b.size && a.modTime.Equal(b.modTime) && a.dev == b.dev && a.ino == b.ino
}

func fingerprintOf(fi os.FileInfo) fileFingerprint {
	fp := fileFingerprint{exists: true, size: fi.Size(), modTime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		fp.dev = uint64(st.Dev)
		fp.ino = uint64(st.Ino)
	}
	return fp
}

// errFileRemoved is the reload failure of a file that existed and is gone.
var errFileRemoved = errors.New("the file was removed")

// OpenFileStore opens the credentials file at path, following symbolic links. A missing file
// is an empty store, created by the first write; a file that cannot be read or parsed is an
// error naming it, and is left untouched. Close stops the polling goroutine.
func OpenFileStore(path string, opts FileStoreOptions) (*FileStore, error) {
	if path == "" {
		return nil, errors.New("credentials: file store: empty path")
	}
	path = filepath.Clean(path)
	s := &FileStore{
		path:     path,
		lockPath: path + ".lock",
		interval: opts.PollInterval,
		logger:   opts.Logger,
		onReload: opts.OnReloadError,
		sem:      make(chan struct{}, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	if s.interval <= 0 {
		s.interval = DefaultPollInterval
	}
	if s.logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	}
	s.encode, s.decode = encodePlain, decodePlain

	data, fp, err := readFileFingerprint(path)
	if err != nil {
		return nil, fmt.Errorf("credentials: file store %s: %w", path, err)
	}
	creds, err := s.decodeFile(data, fp)
	if err != nil {
		return nil, fmt.Errorf("credentials: file store %s: %w", path, err)
	}
	s.seen = fp
	s.snap.Store(newStoreSnapshot(credentialMap(creds)))
	s.removeStaleTemps()
	go s.poll()
	return s, nil
}

// encodePlain and decodePlain are the unencrypted file format.
func encodePlain(creds []Credential) ([]byte, error) { return Marshal(creds) }

func decodePlain(data []byte) ([]Credential, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New("credentials: parse: the file is empty")
	}
	return Parse(bytes.NewReader(data))
}

// decodeFile decodes data read with fp; a missing file holds no credentials.
func (s *FileStore) decodeFile(data []byte, fp fileFingerprint) ([]Credential, error) {
	if !fp.exists {
		return nil, nil
	}
	return s.decode(data)
}

func credentialMap(creds []Credential) map[string]Credential {
	m := make(map[string]Credential, len(creds))
	for _, c := range creds {
		c = normalizeCredential(c)
		m[c.CompanyID] = c
	}
	return m
}

// readFileFingerprint reads path (following links) and fingerprints what it read. A missing
// file is not an error: it returns a fingerprint with exists false.
func readFileFingerprint(path string) ([]byte, fileFingerprint, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fileFingerprint{}, nil
	}
	if err != nil {
		return nil, fileFingerprint{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fileFingerprint{}, err
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fileFingerprint{}, err
	}
	fp := fingerprintOf(fi)
	fp.sum = sha256.Sum256(data)
	return data, fp, nil
}

// Get returns the company's credential from the in-memory snapshot, or ErrNotFound.
func (s *FileStore) Get(ctx context.Context, companyID string) (Credential, error) {
	return s.snap.Load().get(companyID)
}

// GetByTenant returns the credential whose TenantID is tenantID, or ErrNotFound.
func (s *FileStore) GetByTenant(ctx context.Context, tenantID string) (Credential, error) {
	return s.snap.Load().getByTenant(tenantID)
}

// List returns every credential, ordered by company id.
func (s *FileStore) List(ctx context.Context) ([]Credential, error) {
	return s.snap.Load().list(), nil
}

// PutAll validates every credential, then, under the file lock and against the file as it is
// on disk, adds or replaces them all (with replaceAll, removing every other company) in one
// atomic write, or writes nothing.
func (s *FileStore) PutAll(ctx context.Context, creds []Credential, replaceAll bool) error {
	batch, err := prepareBatch(creds)
	if err != nil {
		return err
	}
	return s.write(ctx, func(cur map[string]Credential) (map[string]Credential, error) {
		return mergeBatch(cur, batch, replaceAll)
	})
}

// Update replaces the stored credential if the version on disk equals c.Version, and returns
// it with the next version once the file is durable; otherwise it returns ErrConflict or
// ErrNotFound, and the snapshot reflects the file as found.
func (s *FileStore) Update(ctx context.Context, c Credential) (Credential, error) {
	c, err := prepareOne(c)
	if err != nil {
		return Credential{}, err
	}
	var updated Credential
	err = s.write(ctx, func(cur map[string]Credential) (map[string]Credential, error) {
		next, u, err := applyUpdate(cur, c)
		updated = u
		return next, err
	})
	if err != nil {
		return Credential{}, err
	}
	return updated, nil
}

// Delete removes the company's credential from the file, or returns ErrNotFound.
func (s *FileStore) Delete(ctx context.Context, companyID string) error {
	return s.write(ctx, func(cur map[string]Credential) (map[string]Credential, error) {
		return applyDelete(cur, companyID)
	})
}

// Ping returns nil unless the last reload of the file failed; then it returns that failure
// (the store keeps serving the last good credentials meanwhile).
func (s *FileStore) Ping(ctx context.Context) error {
	if err := s.LastReloadError(); err != nil {
		return fmt.Errorf("credentials: serving the last good credentials: %w", err)
	}
	return nil
}

// LastReloadError returns why the file could not be reloaded, or nil once it was read
// successfully again.
func (s *FileStore) LastReloadError() error {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	return s.reloadErr
}

// Subscribe calls fn with the company id of every credential that a write by this store, or a
// change to the file found by polling, added, changed or removed. fn runs outside any lock of
// the store and must not block.
func (s *FileStore) Subscribe(fn func(companyID string)) (unsubscribe func()) {
	return s.subs.subscribe(fn)
}

// Close stops polling the file. It is idempotent; reads and writes keep working afterwards.
func (s *FileStore) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.done
	})
	return nil
}

// acquire takes s.sem, or fails when ctx ends first.
func (s *FileStore) acquire(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case s.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *FileStore) release() { <-s.sem }

// write runs mutate on the credentials as they are on disk, under s.sem and the file lock,
// and writes its result. Subscribers hear of every company that differs from the snapshot
// held before, whoever changed it.
func (s *FileStore) write(ctx context.Context, mutate func(map[string]Credential) (map[string]Credential, error)) error {
	if err := s.acquire(ctx); err != nil {
		return fmt.Errorf("credentials: file store %s: %w", s.path, err)
	}
	old := s.snap.Load()
	err := s.writeLocked(ctx, mutate)
	changed := diffCompanies(old.byCompany, s.snap.Load().byCompany)
	s.release()
	s.subs.notify(changed)
	return err
}

func (s *FileStore) writeLocked(ctx context.Context, mutate func(map[string]Credential) (map[string]Credential, error)) error {
	if err := os.MkdirAll(filepath.Dir(s.path), 0o700); err != nil {
		return fmt.Errorf("credentials: file store %s: %w", s.path, err)
	}
	unlock, err := lockFile(ctx, s.lockPath)
	if err != nil {
		return fmt.Errorf("credentials: file store %s: lock %s: %w", s.path, s.lockPath, err)
	}
	defer unlock()

	data, fp, err := readFileFingerprint(s.path)
	if err != nil {
		return fmt.Errorf("credentials: file store %s: %w", s.path, err)
	}
	creds, err := s.decodeFile(data, fp)
	if err != nil {
		return fmt.Errorf("credentials: file store %s: not overwriting a file that does not parse: %w", s.path, err)
	}
	cur := credentialMap(creds)
	// Install the file as found first: even when mutate fails (a lost compare-and-swap),
	// readers then see the current versions.
	s.installLocked(cur, fp)

	next, err := mutate(cur)
	if err != nil {
		return err
	}
	list := make([]Credential, 0, len(next))
	for _, c := range next {
		list = append(list, c)
	}
	out, err := s.encode(list)
	if err != nil {
		return fmt.Errorf("credentials: file store %s: %w", s.path, err)
	}
	newFP, renamed, err := s.writeAtomic(out)
	if renamed {
		// The new file is in place (if perhaps not yet durable, when err is set): it is what
		// others read now, so this process serves it too.
		s.installLocked(next, newFP)
	}
	if err != nil {
		return fmt.Errorf("credentials: file store %s: write: %w", s.path, err)
	}
	return nil
}

// installLocked makes m, just read from or written to the file fp, the snapshot, and clears
// any reload failure. s.sem is held.
func (s *FileStore) installLocked(m map[string]Credential, fp fileFingerprint) {
	s.snap.Store(newStoreSnapshot(m))
	s.seen, s.seenErr = fp, nil
	s.setReloadErrorLocked(nil)
}

// writeAtomic writes data to a new temporary file next to s.path (created with O_EXCL, mode
// 0600), syncs it, renames it over s.path and syncs the directory. It returns the written
// file's fingerprint and whether the rename happened.
func (s *FileStore) writeAtomic(data []byte) (fp fileFingerprint, renamed bool, err error) {
	dir := filepath.Dir(s.path)
	f, err := os.CreateTemp(dir, s.tempPrefix()) // O_RDWR|O_CREATE|O_EXCL, mode 0600
	if err != nil {
		return fp, false, err
	}
	tmp := f.Name()
	closed := false
	defer func() {
		if !closed {
			_ = f.Close()
		}
		if !renamed {
			_ = os.Remove(tmp)
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return fp, false, err
	}
	if _, err := f.Write(data); err != nil {
		return fp, false, err
	}
	if err := f.Sync(); err != nil {
		return fp, false, err
	}
	fi, err := f.Stat()
	if err != nil {
		return fp, false, err
	}
	fp = fingerprintOf(fi)
	fp.sum = sha256.Sum256(data)
	closed = true
	if err := f.Close(); err != nil {
		return fp, false, err
	}
	if s.beforeRename != nil {
		if err := s.beforeRename(tmp); err != nil {
			return fp, false, err
		}
	}
	if err := os.Rename(tmp, s.path); err != nil {
		return fp, false, err
	}
	return fp, true, syncDir(dir)
}

// tempPrefix names this store's temporary files: "." + base name + ".tmp-" + random.
func (s *FileStore) tempPrefix() string { return "." + filepath.Base(s.path) + ".tmp-" }

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if errors.Is(err, syscall.EINVAL) { // file systems that cannot sync a directory
		err = nil
	}
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// removeStaleTemps deletes temporary files a crashed writer left behind. It only does so
// while holding the file lock, which every writer holds for as long as its temporary file
// exists, and never waits for it.
func (s *FileStore) removeStaleTemps() {
	dir := filepath.Dir(s.path)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	prefix := s.tempPrefix()
	var stale []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) && e.Type().IsRegular() {
			stale = append(stale, filepath.Join(dir, e.Name()))
		}
	}
	if len(stale) == 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // try the lock once
	unlock, err := lockFile(ctx, s.lockPath)
	if err != nil {
		return
	}
	defer unlock()
	for _, name := range stale {
		if err := os.Remove(name); err == nil {
			s.logger.Info("removed a temporary credentials file left by an interrupted write", "path", name)
		}
	}
}

// lockFile takes an exclusive flock on path (created with mode 0600), retrying until ctx ends;
// a done ctx still gets one attempt. unlock releases it.
func lockFile(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	fd := int(f.Fd())
	wait := time.Millisecond
	for {
		err := syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			_ = f.Close()
			return nil, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			_ = f.Close()
			return nil, fmt.Errorf("waiting for the lock: %w", ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, 20*time.Millisecond)
	}
	return func() {
		_ = syscall.Flock(fd, syscall.LOCK_UN)
		_ = f.Close()
	}, nil
}

// poll checks the file every interval until Close.
func (s *FileStore) poll() {
	defer close(s.done)
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for n := 1; ; n++ {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		select {
		case s.sem <- struct{}{}:
		case <-s.stop:
			return
		}
		changed := s.reloadLocked(n%hashEveryPolls == 0)
		s.release()
		s.subs.notify(changed)
	}
}

// hashEveryPolls makes every so many polls read and hash the file even when its stat data is
// unchanged, to catch an in-place rewrite of the same size within the file system's
// timestamp granularity.
const hashEveryPolls = 4

// reloadLocked re-reads the file if its stat data changed (or always, with force), and
// installs it if its content changed and parses. It returns the companies that changed.
// s.sem is held.
func (s *FileStore) reloadLocked(force bool) []string {
	st, err := os.Stat(s.path)
	var fp fileFingerprint
	switch {
	case errors.Is(err, os.ErrNotExist):
		// fp.exists is false.
	case err != nil:
		s.reloadFailedLocked(err)
		return nil
	default:
		fp = fingerprintOf(st)
	}
	if !force && fp.sameStat(s.seen) {
		s.setReloadErrorLocked(s.seenErr) // clears a passing I/O failure
		return nil
	}
	var data []byte
	if fp.exists {
		data, fp, err = readFileFingerprint(s.path)
		if err != nil {
			s.reloadFailedLocked(err)
			return nil
		}
	}
	if !fp.exists {
		if s.seen.exists {
			// Keep serving what the file held: a removed file is more likely a mistake
			// than a way to revoke every credential (credentials delete is that).
			s.seen, s.seenErr = fp, errFileRemoved
			s.reloadFailedLocked(errFileRemoved)
		} else {
			s.setReloadErrorLocked(s.seenErr)
		}
		return nil
	}
	if s.seen.exists && fp.sum == s.seen.sum {
		s.seen = fp // touched, or rewritten with the same content
		s.setReloadErrorLocked(s.seenErr)
		return nil
	}
	s.seen = fp
	creds, err := s.decode(data)
	if err != nil {
		s.seenErr = err
		s.reloadFailedLocked(err)
		return nil
	}
	old := s.snap.Load()
	s.installLocked(credentialMap(creds), fp)
	changed := diffCompanies(old.byCompany, s.snap.Load().byCompany)
	if len(changed) > 0 {
		s.logger.Info("reloaded the credentials file", "path", s.path, "changed", len(changed))
	}
	return changed
}

// reloadFailedLocked records and reports a failed reload attempt.
func (s *FileStore) reloadFailedLocked(err error) {
	s.setReloadErrorLocked(err)
	if s.onReload != nil {
		s.onReload(s.LastReloadError())
	}
}

// setReloadErrorLocked sets the failure Ping reports (nil clears it), logging each distinct
// failure once and the recovery.
func (s *FileStore) setReloadErrorLocked(err error) {
	if err != nil {
		err = fmt.Errorf("credentials: file store %s: reload: %w", s.path, err)
	}
	s.errMu.Lock()
	prev := s.reloadErr
	s.reloadErr = err
	s.errMu.Unlock()
	if err == nil {
		if prev != nil {
			s.logger.Info("the credentials file is readable again", "path", s.path)
		}
		s.lastLogged = ""
		return
	}
	if msg := err.Error(); msg != s.lastLogged {
		s.lastLogged = msg
		s.logger.Warn("cannot reload the credentials file; keeping the last good credentials",
			"path", s.path, "error", err.Error())
	}
}
