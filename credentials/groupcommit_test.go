package credentials

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/testenv"
)

// Concurrent writes are group-committed: far fewer file writes than updates, every
// compare-and-swap still exact (one winner per version), every winner durable in the file.
func TestFileStoreGroupCommit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credentials.json")
	s := fsOpen(t, path, FileStoreOptions{})
	const companies, writersPerCompany = 50, 4
	var seed []Credential
	for i := range companies {
		seed = append(seed, stOAuth(i+1, ""))
	}
	if err := s.PutAll(t.Context(), seed, false); err != nil {
		t.Fatal(err)
	}
	var writes atomic.Int64
	s.beforeRename = func(string) error {
		writes.Add(1)
		time.Sleep(2 * time.Millisecond) // a slow disk, so that writers pile up
		return nil
	}

	start := make(chan struct{})
	var wg sync.WaitGroup
	var won, lost atomic.Int64
	winners := make([]atomic.Pointer[string], companies)
	for i := range companies {
		cur := fsGet(t, s, i+1)
		for w := range writersPerCompany {
			next := cur
			token := "rotated-" + stCompany(i+1) + "-" + string(rune('a'+w))
			next.RefreshToken = Secret(token)
			wg.Go(func() {
				<-start
				_, err := s.Update(context.Background(), next)
				switch {
				case err == nil:
					won.Add(1)
					winners[i].Store(&token)
				case errors.Is(err, ErrConflict):
					lost.Add(1)
				default:
					t.Errorf("Update: %v", err)
				}
			})
		}
	}
	close(start)
	wg.Wait()

	if won.Load() != companies || lost.Load() != companies*(writersPerCompany-1) {
		t.Fatalf("%d updates won, %d lost; want exactly one winner per company (%d, %d)",
			won.Load(), lost.Load(), companies, companies*(writersPerCompany-1))
	}
	if n := writes.Load(); n >= companies/2 {
		t.Fatalf("%d file writes for %d successful updates: writes are not grouped", n, companies)
	}
	t.Logf("%d successful updates (and %d lost compare-and-swaps) in %d file writes", won.Load(), lost.Load(), writes.Load())
	reopened := fsOpen(t, path, FileStoreOptions{})
	for i := range companies {
		c := fsGet(t, reopened, i+1)
		if w := winners[i].Load(); w == nil || c.RefreshToken.Reveal() != *w || c.Version != 2 {
			t.Fatalf("company %d on disk: refresh token %v version %d, want the winner's at version 2", i+1, c.RefreshToken, c.Version)
		}
	}
}

// A committing writer whose context ends while it waits for the file lock fails alone: the
// writes queued behind it are committed by the next writer, not failed with its error.
func TestFileStoreGroupCommitCommitterCancelled(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credentials.json")
	s := fsOpen(t, path, FileStoreOptions{})
	if err := s.PutAll(t.Context(), []Credential{stOAuth(1, ""), stOAuth(2, "")}, false); err != nil {
		t.Fatal(err)
	}
	lock, err := os.OpenFile(path+".lock", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}

	// The first writer becomes the committer and blocks on the lock with a short context.
	c1 := fsGet(t, s, 1)
	c1.RefreshToken = "refresh-1b"
	first := make(chan error, 1)
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	go func() { _, err := s.Update(ctx, c1); first <- err }()
	queued := func() int { s.queueMu.Lock(); defer s.queueMu.Unlock(); return len(s.queue) }
	testenv.WaitFor(t, "the first writer to commit (and wait for the lock)", 5*time.Second,
		func() bool { return len(s.sem) == 1 && queued() == 0 })
	// The second queues behind it, with all the time in the world.
	c2 := fsGet(t, s, 2)
	c2.RefreshToken = "refresh-2b"
	second := make(chan error, 1)
	go func() { _, err := s.Update(context.Background(), c2); second <- err }()
	testenv.WaitFor(t, "the second writer to queue", 5*time.Second, func() bool { return queued() == 1 })

	if err := <-first; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the cancelled committer got %v, want context.DeadlineExceeded", err)
	}
	select {
	case err := <-second:
		t.Fatalf("the queued write finished with %v while the lock was still held", err)
	case <-time.After(100 * time.Millisecond):
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-second:
		if err != nil {
			t.Fatalf("the queued write failed: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the queued write was never committed")
	}
	reopened := fsOpen(t, path, FileStoreOptions{})
	if !fsHas(reopened, 2, "refresh-2b") || !fsHas(reopened, 1, "refresh-1") {
		t.Fatal("the file does not hold exactly the queued write")
	}
}
