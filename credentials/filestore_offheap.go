package credentials

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"
	"unsafe"
)

// offHeap holds the file store's packed records in an anonymous memory mapping, outside the
// Go heap. The reason is the garbage collector's pacing: with GOGC at 100 the heap grows to
// about twice what is live, so 16 MB of records on the heap cost about 32 MB of RSS, and
// outside it 16 MB.
//
// Records are appended, each as a uvarint length and the packed bytes, and read through
// views: strings that point into the mapping. A view must not outlive the mapping, so views
// never leave this file's callers in filestore_packed.go: everything handed out is copied to
// the heap first. The mapping is freed by free, or, if its owner forgets, by a cleanup once
// the offHeap is unreachable.
type offHeap struct {
	full    []byte // the mapping, as syscall.Mmap returned it
	n       int    // bytes used
	cleanup runtime.Cleanup
}

var pageSize = os.Getpagesize()

// maxOffHeap bounds a mapping: offsets are uint32.
const maxOffHeap = 1 << 32

func newOffHeap(size int) (*offHeap, error) {
	m := &offHeap{}
	if err := m.remap(size); err != nil {
		return nil, err
	}
	return m, nil
}

// remap moves the records into a new mapping of at least size bytes.
func (m *offHeap) remap(size int) error {
	size = (max(size, 1) + pageSize - 1) / pageSize * pageSize
	if size > maxOffHeap {
		return fmt.Errorf("credentials: packed credentials exceed %d bytes", maxOffHeap)
	}
	b, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		return fmt.Errorf("credentials: allocating %d bytes for packed credentials: %w", size, err)
	}
	if m.full != nil {
		copy(b, m.full[:m.n])
		m.cleanup.Stop()
		if err := syscall.Munmap(m.full); err != nil {
			panic(errors.Join(errors.New("credentials: unmapping packed credentials"), err))
		}
	}
	m.full = b
	m.cleanup = runtime.AddCleanup(m, func(b []byte) { _ = syscall.Munmap(b) }, b)
	return nil
}

// append adds a record and returns its offset.
func (m *offHeap) append(rec string) (uint32, error) {
	need := m.n + binary.MaxVarintLen64 + len(rec)
	if need > len(m.full) {
		if err := m.remap(max(need, 2*len(m.full))); err != nil {
			return 0, err
		}
	}
	off := m.n
	m.n += binary.PutUvarint(m.full[m.n:], uint64(len(rec)))
	m.n += copy(m.full[m.n:], rec)
	return uint32(off), nil
}

// view returns the record at off, as a string that points into the mapping: it is valid only
// until free, and must not be kept.
func (m *offHeap) view(off uint32) string {
	n, k := binary.Uvarint(m.full[off:m.n])
	if k <= 0 || n > uint64(m.n-int(off)-k) {
		panic(errPackedCorrupt)
	}
	if n == 0 {
		return ""
	}
	return unsafe.String(&m.full[int(off)+k], int(n))
}

// free unmaps the records. m is not used again.
func (m *offHeap) free() {
	if m.full == nil {
		return
	}
	m.cleanup.Stop()
	if err := syscall.Munmap(m.full); err != nil {
		panic(errors.Join(errors.New("credentials: unmapping packed credentials"), err))
	}
	m.full, m.n = nil, 0
}
