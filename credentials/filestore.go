package credentials

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
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
	// Sealer, if set, encrypts every secret the store writes (the encrypted format, see
	// FileEncryption) and decrypts what it reads. A plain file holding credentials is then
	// refused (ErrPlaintextWithKey) unless AllowPlain is set. Without a Sealer, an encrypted
	// file cannot be opened.
	Sealer *Sealer
	// AllowPlain lets a store with a Sealer read a plain file holding credentials (it is
	// encrypted on the next write). Only the operator's deliberate tools set it (credentials
	// rotate-key and migrate); the server does not, so a plain file put in place of the
	// encrypted one is refused rather than served.
	AllowPlain bool
}

// ErrPlaintextWithKey is the failure of a plain credentials file holding credentials, read by
// a store with an encryption key and without FileStoreOptions.AllowPlain: an encryption key
// means the file is encrypted. A store that meets one while running keeps serving the last
// good credentials and fails Ping; at start-up it serves none and fails Ping until the file
// is encrypted (credentials rotate-key, or credentials migrate).
var ErrPlaintextWithKey = errors.New("the credentials file is not encrypted but an encryption key is configured")

// FileStore is the file:// store: one JSON document (see Parse and Marshal) holding every
// credential, for a single replica plus the occasional `credentials import` process. With a
// Sealer, every secret in it is sealed (see FileEncryption); every write re-seals every
// secret with the Sealer's newest key.
//
// A file that group or others may access is refused (see checkFileMode): at start-up, on
// reload, and before a write would replace it.
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

	// sealer encrypts the secrets written, and decrypts those read; nil: plain files.
	sealer *Sealer
	// allowPlain: read a plain file holding credentials despite the sealer.
	allowPlain bool
	// sealerGen is the sealer's key generation when the file was last read (a reload of the
	// keys may make a file that did not decrypt readable).
	sealerGen uint64
	// euid is the process's effective user id, for checkFileMode.
	euid int

	// beforeRename, when set (by tests), runs after the temporary file is written and
	// synced and before it is renamed over path; an error aborts the write there, as a
	// crash would.
	beforeRename func(tmpPath string) error

	snap atomic.Pointer[packedSnapshot]
	subs subscriberSet
	// polls counts finished polls, so tests can wait for some to pass.
	polls atomic.Int64

	// sem serialises this process's writes and reloads (a channel so waiting honours a
	// context). The fields below it are guarded by it.
	sem           chan struct{}
	seen          fileFingerprint // the file as last read, parsed or not
	seenErr       error           // why seen did not parse, or nil
	seenEncrypted bool            // seen is in the encrypted format (when it parsed)
	lastLogged    string          // the last reload failure logged
	plainNoted    bool            // a plain file found while sealing was logged

	errMu     sync.Mutex
	reloadErr error // the current reload failure, reported by Ping

	queueMu sync.Mutex
	queue   []*writeRequest // writes waiting for the next group commit

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
	mode    os.FileMode // permission bits
	uid     int         // owner, or -1 when unknown
	sum     [sha256.Size]byte
}

// sameStat reports whether a and b look like the same file version without reading it.
func (a fileFingerprint) sameStat(b fileFingerprint) bool {
	if a.exists != b.exists {
		return false
	}
	return !a.exists || a.size == b.size && a.modTime.Equal(b.modTime) && a.dev == b.dev && a.ino == b.ino &&
		a.sameOwnerAndMode(b)
}

func (a fileFingerprint) sameOwnerAndMode(b fileFingerprint) bool {
	return a.mode == b.mode && a.uid == b.uid
}

func fingerprintOf(fi os.FileInfo) fileFingerprint {
	fp := fileFingerprint{exists: true, size: fi.Size(), modTime: fi.ModTime(), mode: fi.Mode().Perm(), uid: -1}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		fp.dev = uint64(st.Dev)
		fp.ino = uint64(st.Ino)
		fp.uid = int(st.Uid)
	}
	return fp
}

// errFileRemoved is the reload failure of a file that existed and is gone.
var errFileRemoved = errors.New("the file was removed")

// OpenFileStore opens the credentials file at path, following symbolic links. A missing file
// is an empty store, created by the first write; a file that cannot be read, parsed or
// decrypted, or that group or others may access, is an error naming it, and is left
// untouched. Close stops the polling goroutine.
func OpenFileStore(path string, opts FileStoreOptions) (*FileStore, error) {
	if path == "" {
		return nil, errors.New("credentials: file store: empty path")
	}
	path = filepath.Clean(path)
	s := &FileStore{
		path:       path,
		lockPath:   path + ".lock",
		interval:   opts.PollInterval,
		logger:     opts.Logger,
		onReload:   opts.OnReloadError,
		sealer:     opts.Sealer,
		allowPlain: opts.AllowPlain,
		euid:       os.Geteuid(),
		sem:        make(chan struct{}, 1),
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
	}
	if s.interval <= 0 {
		s.interval = DefaultPollInterval
	}
	if s.logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	}

	res := s.readFile()
	if errors.Is(res.decodeErr, ErrPlaintextWithKey) {
		// No last good credentials to keep: serve none, and fail Ping (not ready) until the
		// operator encrypts the file; polling picks the encrypted file up.
		s.logger.Error("refusing the credentials file: it is not encrypted but PLEO_PROXY_ENCRYPTION_KEY is set; "+
			"serving no credentials until it is encrypted", "path", s.path, "fix", plainFix(s.path))
		s.installLocked(newEmptySnapshot(), fileFingerprint{}, false)
		s.seen, s.seenErr = res.fp, res.decodeErr
		s.setReloadErrorLocked(res.decodeErr)
	} else if err := cmp.Or(res.ioErr, res.decodeErr); err != nil {
		return nil, fmt.Errorf("credentials: file store %s: %w", path, err)
	} else {
		s.notePlainLocked(res.fp, res.encrypted)
		s.seen, s.seenEncrypted = res.fp, res.encrypted
		s.installLocked(res.snap, res.fp, res.encrypted)
	}
	s.removeStaleTemps()
	go s.poll()
	return s, nil
}

// readFile reads the file as readSnapshot does, and refuses a plain file holding
// credentials when the store has a Sealer and not allowPlain (ErrPlaintextWithKey).
func (s *FileStore) readFile() readResult {
	if s.sealer != nil {
		s.sealerGen = s.sealer.Generation()
	}
	res := readSnapshot(s.path, s.euid, s.sealer)
	if res.ioErr == nil && res.decodeErr == nil && res.fp.exists && s.sealer != nil && !res.encrypted && !s.allowPlain && res.snap.len() > 0 {
		n := res.snap.len()
		res.snap.release()
		res.snap = nil
		res.decodeErr = fmt.Errorf("%w: refusing %d plaintext credential(s); to encrypt the file on purpose, %s", ErrPlaintextWithKey, n, plainFix(s.path))
	}
	return res
}

// plainFix says how an operator encrypts a plain credentials file on purpose.
func plainFix(path string) string {
	return fmt.Sprintf("run: pleo-auth-proxy credentials rotate-key (encrypts it in place with the newest key), "+
		"or: pleo-auth-proxy credentials migrate --from file://%s --to file://%s.encrypted and move that file in place", path, path)
}

// notePlainLocked logs, once until the file is next found encrypted, that a plain file was
// found while a Sealer is set. s.sem is held (or the store is not shared yet).
func (s *FileStore) notePlainLocked(fp fileFingerprint, encrypted bool) {
	switch {
	case s.sealer == nil || !fp.exists:
	case encrypted:
		s.plainNoted = false
	case !s.plainNoted:
		s.plainNoted = true
		s.logger.Warn("the credentials file is not encrypted; it will be encrypted on the next write",
			"path", s.path, "key_id", s.sealer.KeyID())
	}
}

// credentialMap returns creds by company id, normalised as every store keeps them.
func credentialMap(creds []Credential) map[string]Credential {
	m := make(map[string]Credential, len(creds))
	for _, c := range creds {
		c = normalizeCredential(c)
		m[c.CompanyID] = c
	}
	return m
}

// Get returns the company's credential from the in-memory snapshot, or ErrNotFound.
func (s *FileStore) Get(ctx context.Context, companyID string) (Credential, error) {
	p := s.acquire()
	defer p.release()
	return p.get(companyID)
}

// GetByTenant returns the credential whose TenantID is tenantID, or ErrNotFound.
func (s *FileStore) GetByTenant(ctx context.Context, tenantID string) (Credential, error) {
	p := s.acquire()
	defer p.release()
	return p.getByTenant(tenantID)
}

// List returns every credential, ordered by company id.
func (s *FileStore) List(ctx context.Context) ([]Credential, error) {
	p := s.acquire()
	defer p.release()
	return p.list(), nil
}

// Scan calls fn with every credential, without its secrets, ordered by company id, until fn
// returns false. It reads one snapshot and unpacks one credential at a time (List copies
// them all).
func (s *FileStore) Scan(ctx context.Context, fn func(Credential) bool) error {
	p := s.acquire()
	defer p.release()
	for i := range p.len() {
		if !fn(p.metadata(i)) {
			return nil
		}
	}
	return nil
}

// acquire returns the current snapshot, with a reference the caller releases.
func (s *FileStore) acquire() *packedSnapshot {
	for {
		if p := s.snap.Load(); p.tryAcquire() {
			return p
		}
		// Replaced and freed between the load and the acquire: the next load is newer.
	}
}

var _ Scanner = (*FileStore)(nil)

// PutAll validates every credential, then, under the file lock and against the file as it is
// on disk, adds or replaces them all (with replaceAll, removing every other company) in one
// atomic write, or writes nothing.
func (s *FileStore) PutAll(ctx context.Context, creds []Credential, replaceAll bool) error {
	batch, err := prepareBatch(creds)
	if err != nil {
		return err
	}
	return s.write(ctx, func(w *fileChanges) error {
		return mergeBatch(w, batch, replaceAll)
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
	err = s.write(ctx, func(w *fileChanges) error {
		var err error
		updated, err = applyUpdate(w, c)
		return err
	})
	if err != nil {
		return Credential{}, err
	}
	return updated, nil
}

// Delete removes the company's credential from the file, or returns ErrNotFound.
func (s *FileStore) Delete(ctx context.Context, companyID string) error {
	return s.write(ctx, func(w *fileChanges) error {
		return applyDelete(w, companyID)
	})
}

// Ping returns nil unless the last reload of the file failed; then it returns that failure
// (the store keeps serving the last good credentials meanwhile).
func (s *FileStore) Ping(ctx context.Context) error {
	if err := s.LastReloadError(); err != nil {
		if errors.Is(err, ErrPlaintextWithKey) {
			p := s.acquire()
			n := p.len()
			p.release()
			if n == 0 {
				return fmt.Errorf("credentials: serving no credentials: %w", err) // refused at start-up
			}
		}
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

func (s *FileStore) release() { <-s.sem }

// write runs mutate on the changes to the credentials as they are on disk, under s.sem and
// the file lock, and writes the result. Subscribers hear of every company that differs from the snapshot
// held before, whoever changed it.
//
// Writes are group-committed: a caller queues its mutation, and whichever caller takes s.sem
// applies every queued mutation, in order, to one read of the file, then writes and syncs the
// file once for all of them. Each mutation sees the ones before it (so compare-and-swap
// updates stay exact); one that fails is left out and fails alone. In a refresh storm this
// turns N file rewrites and 2N fsyncs, one after another inside every token's crash window,
// into a few.
func (s *FileStore) write(ctx context.Context, mutate func(w *fileChanges) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("credentials: file store %s: %w", s.path, err)
	}
	req := &writeRequest{mutate: mutate, done: make(chan struct{})}
	s.queueMu.Lock()
	s.queue = append(s.queue, req)
	s.queueMu.Unlock()
	for {
		select {
		case <-req.done:
			return req.err
		case s.sem <- struct{}{}:
			s.commitQueued(ctx, req)
		case <-ctx.Done():
			if s.dequeue(req) {
				return fmt.Errorf("credentials: file store %s: %w", s.path, ctx.Err())
			}
			// Another caller is committing it: the outcome is on its way.
			<-req.done
			return req.err
		}
	}
}

// writeRequest is one queued mutation of write, and its outcome once done is closed.
type writeRequest struct {
	mutate func(w *fileChanges) error // w untouched when it fails
	err    error
	done   chan struct{}
}

// dequeue removes req from the queue if no committer has taken it yet.
func (s *FileStore) dequeue(req *writeRequest) bool {
	s.queueMu.Lock()
	defer s.queueMu.Unlock()
	for i, r := range s.queue {
		if r == req {
			s.queue = append(s.queue[:i], s.queue[i+1:]...)
			return true
		}
	}
	return false
}

// errNothingToWrite ends a group commit whose every mutation failed: the file stays as it is.
var errNothingToWrite = errors.New("credentials: nothing to write")

// commitQueued runs with s.sem taken (and releases it): it takes every queued request,
// applies them in one writeLocked, and completes them. self is the committing caller's own
// request and ctx its context: if ctx ends before the mutations ran (waiting for the file
// lock), self fails with it and the other requests go back to the queue for the next
// committer, rather than fail for someone else's cancellation.
func (s *FileStore) commitQueued(ctx context.Context, self *writeRequest) {
	s.queueMu.Lock()
	batch := s.queue
	s.queue = nil
	s.queueMu.Unlock()
	if len(batch) == 0 {
		s.release()
		return
	}
	ran, applied := false, 0
	changed, err := s.writeLocked(ctx, func(w *fileChanges) error {
		ran = true
		for _, r := range batch {
			if err := r.mutate(w); err != nil {
				r.err = err
				continue
			}
			applied++
		}
		if applied == 0 {
			return errNothingToWrite
		}
		return nil
	})
	var finished, requeue []*writeRequest
	if err != nil && !ran && ctx.Err() != nil {
		for _, r := range batch {
			if r == self {
				r.err = fmt.Errorf("credentials: file store %s: %w", s.path, ctx.Err())
				finished = append(finished, r)
			} else {
				requeue = append(requeue, r)
			}
		}
	} else {
		for _, r := range batch {
			if r.err == nil && err != nil && !errors.Is(err, errNothingToWrite) {
				r.err = err
			}
		}
		finished = batch
	}
	if len(requeue) > 0 {
		s.queueMu.Lock()
		s.queue = append(requeue, s.queue...)
		s.queueMu.Unlock()
	}
	s.release()
	for _, r := range finished {
		close(r.done)
	}
	s.subs.notify(changed)
}

// writeLocked runs under s.sem: it takes the file lock, reads the file (or reuses the snapshot
// when the file is unchanged), runs mutate on the changes to it, and writes the result. It
// returns the companies that changed in the snapshot, whether by the write or because the
// file had changed.
func (s *FileStore) writeLocked(ctx context.Context, mutate func(*fileChanges) error) (changed []string, err error) {
	if err := os.MkdirAll(filepath.Dir(s.path), 0o700); err != nil {
		return nil, fmt.Errorf("credentials: file store %s: %w", s.path, err)
	}
	unlock, err := lockFile(ctx, s.lockPath)
	if err != nil {
		return nil, fmt.Errorf("credentials: file store %s: lock %s: %w", s.path, s.lockPath, err)
	}
	defer unlock()

	cur, fp, encrypted, err := s.readForWriteLocked()
	if err != nil {
		return nil, err
	}
	if !fp.exists && (s.seen.exists || s.seenErr == errFileRemoved) {
		// The file this store served was removed while it ran. Polling keeps serving the last
		// good credentials (a removal is more likely a mistake than a way to revoke them all);
		// so does a write, which recreates the file from them. Starting from an empty file
		// instead would drop every other credential, and turn a rotated refresh token's commit
		// into ErrNotFound — the token lost, the company forced to reconnect.
		cur.release()
		cur = s.snap.Load()
		s.logger.Warn("the credentials file was removed; recreating it from the last good credentials",
			"path", s.path, "credentials", cur.len())
	} else {
		// Install the file as found first: even when mutate fails (a lost compare-and-swap),
		// readers then see the current versions.
		changed = s.installLocked(cur, fp, encrypted)
	}
	// cur is the installed snapshot now, which only this goroutine (holding s.sem) can replace.

	w := newFileChanges(cur)
	if err := mutate(w); err != nil {
		return changed, err
	}
	next, err := w.build()
	if err != nil {
		return changed, fmt.Errorf("credentials: file store %s: %w", s.path, err)
	}
	newFP, renamed, err := s.writeAtomic(func(out io.Writer) error {
		return writeSnapshot(out, next, s.sealer)
	})
	if renamed {
		// The new file is in place (if perhaps not yet durable, when err is set): it is what
		// others read now, so this process serves it too.
		changed = append(changed, s.installLocked(next, newFP, s.sealer != nil)...)
		slices.Sort(changed)
		changed = slices.Compact(changed)
		if s.sealer != nil && fp.exists && !encrypted {
			s.logger.Info("encrypted the credentials file", "path", s.path, "key_id", s.sealer.KeyID())
		}
		s.notePlainLocked(newFP, s.sealer != nil)
	} else if next != cur {
		next.release()
	}
	if err != nil {
		return changed, fmt.Errorf("credentials: file store %s: write: %w", s.path, err)
	}
	return changed, nil
}

// readForWriteLocked reads the file for a write, under the file lock: the snapshot served,
// when the file is still the one it was read from (a hash of the file, not a parse of it);
// else the file decoded afresh, a new snapshot the caller installs or releases. A file that
// cannot be read or parsed fails the write.
func (s *FileStore) readForWriteLocked() (*packedSnapshot, fileFingerprint, bool, error) {
	if s.seen.exists && s.seenErr == nil {
		fp, err := hashFile(s.path)
		if err != nil {
			return nil, fp, false, fmt.Errorf("credentials: file store %s: %w", s.path, err)
		}
		if fp.exists && fp.sum == s.seen.sum && fp.sameOwnerAndMode(s.seen) {
			if err := checkFileMode(s.path, fp.mode, fp.uid, s.euid, kubeletProjected(s.path)); err != nil {
				return nil, fp, false, fmt.Errorf("credentials: file store %s: not writing over a file that cannot be read: %w", s.path, err)
			}
			return s.snap.Load(), fp, s.seenEncrypted, nil
		}
	}
	res := s.readFile()
	if res.ioErr != nil {
		return nil, res.fp, false, fmt.Errorf("credentials: file store %s: %w", s.path, res.ioErr)
	}
	if res.decodeErr != nil {
		return nil, res.fp, false, fmt.Errorf("credentials: file store %s: not writing over a file that cannot be read: %w", s.path, res.decodeErr)
	}
	return res.snap, res.fp, res.encrypted, nil
}

// installLocked makes snap, just read from or written to the file fp, the snapshot (taking
// over the caller's reference), clears any reload failure, and returns the companies that
// differ from the snapshot it replaced. s.sem is held (or the store is not shared yet).
func (s *FileStore) installLocked(snap *packedSnapshot, fp fileFingerprint, encrypted bool) []string {
	var changed []string
	if old := s.snap.Swap(snap); old != nil && old != snap {
		changed = diffPacked(old, snap)
		old.release()
	}
	s.seen, s.seenErr, s.seenEncrypted = fp, nil, encrypted
	s.setReloadErrorLocked(nil)
	return changed
}

// writeAtomic writes, with write, a new temporary file next to s.path (created with O_EXCL,
// mode 0600), syncs it, renames it over s.path and syncs the directory. It returns the written
// file's fingerprint and whether the rename happened.
func (s *FileStore) writeAtomic(write func(io.Writer) error) (fp fileFingerprint, renamed bool, err error) {
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
	h := sha256.New()
	if err := write(io.MultiWriter(f, h)); err != nil {
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
	h.Sum(fp.sum[:0])
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
		s.polls.Add(1)
	}
}

// Reload looks at the file now rather than at the next poll: a stat, and a re-read when the
// file's stat data (size, modification time, inode) changed, as replacing it by rename does.
// Subscribers hear of what changed. It implements Reloader.
func (s *FileStore) Reload(ctx context.Context) error {
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	changed := s.reloadLocked(false)
	s.release()
	s.subs.notify(changed)
	return s.LastReloadError()
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
	// New keys (a reloaded PLEO_PROXY_ENCRYPTION_KEY_FILE) may open a file that failed.
	keysChanged := s.seenErr != nil && s.sealer != nil && s.sealer.Generation() != s.sealerGen
	if !force && !keysChanged && fp.sameStat(s.seen) {
		s.setReloadErrorLocked(s.seenErr) // clears a passing I/O failure
		return nil
	}
	if fp.exists {
		// Hash the file first: a parse is what costs, and a rewrite of the same content
		// (or a force on an unchanged file) needs none.
		if fp, err = hashFile(s.path); err != nil {
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
	if !keysChanged && s.seen.exists && fp.sum == s.seen.sum && fp.sameOwnerAndMode(s.seen) {
		s.seen = fp // touched, or rewritten with the same content
		s.setReloadErrorLocked(s.seenErr)
		return nil
	}
	res := s.readFile()
	switch {
	case res.ioErr != nil:
		s.reloadFailedLocked(res.ioErr)
		return nil
	case !res.fp.exists:
		res.snap.release()
		return s.reloadLocked(false) // removed since it was hashed
	case res.decodeErr != nil:
		s.seen, s.seenErr = res.fp, res.decodeErr
		s.reloadFailedLocked(res.decodeErr)
		return nil
	}
	s.notePlainLocked(res.fp, res.encrypted)
	changed := s.installLocked(res.snap, res.fp, res.encrypted)
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

// RotateKey rewrites the file, sealing every secret with the newest key of the store's Sealer
// (a plain file is encrypted), and returns how many credentials it holds. It fails without a
// Sealer, and, like every write, when the file cannot be read with the configured keys.
func (s *FileStore) RotateKey(ctx context.Context) (int, error) {
	if s.sealer == nil {
		return 0, fmt.Errorf("credentials: file store %s: rotate key: no encryption key is configured", s.path)
	}
	n := 0
	err := s.write(ctx, func(w *fileChanges) error {
		n = w.count()
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

var _ KeyRotator = (*FileStore)(nil)

// checkFileMode refuses a credentials file that group or others may access, naming its mode
// and the fix. A file must grant nothing to group or others (0600, 0400), with two
// exceptions for files owned by root, which this process neither wrote nor can change:
//
//   - read by a non-root process, it may also be readable by its group (0440, 0640), as a
//     system file shared with a service's group is;
//   - in a Kubernetes secret (or configMap, or projected) volume — projected: the kubelet's
//     layout, see kubeletProjected — it may be readable by group and others (0440, 0444):
//     such a volume is visible only inside the containers that mount it, and a pod without an
//     fsGroup can give a non-root container read access no other way.
//
// Write or execute access for group or others is never accepted.
func checkFileMode(path string, mode os.FileMode, owner, euid int, projected bool) error {
	mode = mode.Perm()
	allowed := os.FileMode(0o700)
	switch {
	case owner == 0 && projected:
		allowed = 0o744
	case owner == 0 && euid != 0:
		allowed = 0o740
	}
	extra := mode &^ allowed
	if extra == 0 {
		return nil
	}
	var who []string
	if g := (extra >> 3) & 7; g != 0 {
		who = append(who, "group ("+accessVerbs(g)+")")
	}
	if o := extra & 7; o != 0 {
		who = append(who, "others ("+accessVerbs(o)+")")
	}
	fix := fmt.Sprintf("run: chmod 600 %s", path)
	if projected {
		fix = "set the Kubernetes volume's defaultMode to 0440 (with the pod's fsGroup) or 0444"
	}
	return fmt.Errorf("mode %04o gives %s access to a file of secrets; %s", mode, strings.Join(who, " and "), fix)
}

// kubeletProjected reports whether path is a file of a Kubernetes secret, configMap or
// projected volume, recognised by the kubelet's atomic-writer layout: path is a symbolic link
// to ..data/<its name>, and ..data beside it a symbolic link to the current timestamped
// directory.
func kubeletProjected(path string) bool {
	target, err := os.Readlink(path)
	if err != nil || filepath.Clean(target) != filepath.Join("..data", filepath.Base(path)) {
		return false
	}
	fi, err := os.Lstat(filepath.Join(filepath.Dir(path), "..data"))
	return err == nil && fi.Mode()&os.ModeSymlink != 0
}

// accessVerbs names permission bits rwx as "read", "read, write", …
func accessVerbs(bits os.FileMode) string {
	var v []string
	if bits&4 != 0 {
		v = append(v, "read")
	}
	if bits&2 != 0 {
		v = append(v, "write")
	}
	if bits&1 != 0 {
		v = append(v, "execute")
	}
	return strings.Join(v, ", ")
}

// FileEncryption is the top-level "encryption" member of an encrypted credentials file. Its
// presence says every secret field (access_token, refresh_token, api_key) of every record
// holds a value sealed by a Sealer (v1.<key id>.<data>) for that record's company and that
// field; every other field is as in the plain format:
//
//	{"encryption": {"version": 1},
//	 "credentials": [{"company_id": "5a1c…", "type": "oauth2",
//	                  "access_token": "v1.3f9a…", "refresh_token": "v1.3f9a…", …}]}
type FileEncryption struct {
	// Version is the envelope format; 1 is the only one.
	Version int `json:"version"`
}

// FileEncryptionVersion is the FileEncryption.Version this build writes and reads.
const FileEncryptionVersion = 1

// encryptedFile is the encrypted document.
type encryptedFile struct {
	Encryption  *FileEncryption `json:"encryption,omitempty"` // nil: the plain format
	Credentials []Record        `json:"credentials"`
}

// secretFields lists a record's secret fields with their names.
func secretFields(r *Record) [3]struct {
	name string
	v    *string
} {
	return [3]struct {
		name string
		v    *string
	}{{FieldAccessToken, &r.AccessToken}, {FieldRefreshToken, &r.RefreshToken}, {FieldAPIKey, &r.APIKey}}
}

// sealRecord replaces every secret of r with its sealed form, bound to r's company and the
// field, with sealer's newest key.
func sealRecord(r *Record, sealer *Sealer) error {
	for _, fld := range secretFields(r) {
		if *fld.v == "" {
			continue
		}
		sealed, err := sealer.Seal(r.CompanyID, fld.name, []byte(*fld.v))
		if err != nil {
			return fmt.Errorf("credentials: marshal: company %s: %w", r.CompanyID, err)
		}
		*fld.v = sealed
	}
	return nil
}

// parseFile decodes a file in either format and validates it as Parse does; encrypted reports
// which format it was. An encrypted file needs a sealer holding the key of every value in it;
// a plain file is read with or without one, but one holding sealed values is refused (its
// "encryption" member was lost, and a sealed value must never be sent as a credential).
func parseFile(data []byte, sealer *Sealer) (creds []Credential, encrypted bool, err error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, false, errors.New("credentials: parse: the file is empty")
	}
	var peek struct {
		Encryption json.RawMessage `json:"encryption"`
	}
	if json.Unmarshal(data, &peek) != nil || peek.Encryption == nil {
		creds, err := Parse(bytes.NewReader(data))
		if err != nil {
			return nil, false, err
		}
		for i, c := range creds {
			for _, v := range []struct {
				name string
				s    Secret
			}{{FieldAccessToken, c.AccessToken}, {FieldRefreshToken, c.RefreshToken}, {FieldAPIKey, c.APIKey}} {
				if IsSealed(v.s.Reveal()) {
					return nil, false, &RecordError{Index: i, CompanyID: c.CompanyID,
						Err: fmt.Errorf("%s holds a sealed value but the file has no \"encryption\" member", v.name)}
				}
			}
		}
		return creds, false, nil
	}

	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f encryptedFile
	if err := dec.Decode(&f); err != nil {
		return nil, true, fmt.Errorf("credentials: parse: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, true, errors.New("credentials: parse: unexpected data after the document")
	}
	switch {
	case f.Encryption == nil:
		return nil, true, errors.New(`credentials: parse: "encryption" must be an object such as {"version": 1}`)
	case f.Encryption.Version != FileEncryptionVersion:
		return nil, true, fmt.Errorf("credentials: parse: encryption version %d is not one this build reads (%d)", f.Encryption.Version, FileEncryptionVersion)
	case f.Credentials == nil:
		return nil, true, errors.New(`credentials: parse: missing "credentials" array`)
	}
	if sealer == nil {
		return nil, true, fmt.Errorf("the file is encrypted (key %s) and no encryption key is configured: set PLEO_PROXY_ENCRYPTION_KEY or PLEO_PROXY_ENCRYPTION_KEY_FILE",
			strings.Join(sealedKeyIDs(f.Credentials), ", "))
	}
	for i := range f.Credentials {
		r := &f.Credentials[i]
		for _, fld := range secretFields(r) {
			if *fld.v == "" {
				continue
			}
			plain, err := sealer.Open(r.CompanyID, fld.name, *fld.v)
			if err != nil {
				return nil, true, &RecordError{Index: i, CompanyID: r.CompanyID, Err: fmt.Errorf("%s: %w", fld.name, err)}
			}
			*fld.v = string(plain)
		}
	}
	if creds, err = FromRecords(f.Credentials); err != nil {
		return nil, true, err
	}
	return creds, true, nil
}

// sealedKeyIDs lists, sorted, the key ids the sealed values of records need.
func sealedKeyIDs(records []Record) []string {
	var ids []string
	for i := range records {
		for _, fld := range secretFields(&records[i]) {
			if id, err := SealedKeyID(*fld.v); err == nil && !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
	}
	slices.Sort(ids)
	if len(ids) == 0 {
		return []string{"unknown"}
	}
	return ids
}

// ParseFile decodes a credentials document in either of the file store's formats, plain or
// encrypted (see FileEncryption), and validates it as Parse does. An encrypted document needs
// sealer, holding the key of every value in it; a plain one is read with or without.
func ParseFile(data []byte, sealer *Sealer) ([]Credential, error) {
	creds, _, err := parseFile(data, sealer)
	return creds, err
}
