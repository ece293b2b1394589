package credentials

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// fsBenchFile writes a file of n OAuth credentials with tenants and 43-character tokens (as
// bench/loadtool creds does), encrypted with sealer when it is set, and returns its path.
func fsBenchFile(b *testing.B, n int, sealer *Sealer) string {
	b.Helper()
	now := time.Now().UTC().Truncate(time.Second)
	creds := make([]Credential, n)
	for i := range creds {
		creds[i] = Credential{
			CompanyID: fmt.Sprintf("30000000-0000-4000-8000-%012d", i), TenantID: fmt.Sprintf("bench-mem-%d", i),
			Type: OAuth2, AccessToken: Secret(fmt.Sprintf("at-%040d", i)), RefreshToken: Secret(fmt.Sprintf("rt-%040d", i)),
			ExpiresAt: now.Add(time.Hour), LastRefreshedAt: now, State: StateActive, Version: 1,
		}
	}
	data, err := marshalFile(creds, sealer)
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(b.TempDir(), "credentials.json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		b.Fatal(err)
	}
	return path
}

// benchBothFormats runs fn as two sub-benchmarks, on a plain and on an encrypted file of
// 100,000 credentials (fsBenchFile), with the sealer that reads it (nil for the plain one).
func benchBothFormats(b *testing.B, fn func(b *testing.B, path string, sealer *Sealer)) {
	for _, enc := range []bool{false, true} {
		b.Run(fmt.Sprintf("encrypted=%v", enc), func(b *testing.B) {
			var sealer *Sealer
			if enc {
				sealer = testSealer(b, testKey(1))
			}
			fn(b, fsBenchFile(b, 100_000, sealer), sealer)
		})
	}
}

// openBenchStore opens path without background polling; the caller closes it.
func openBenchStore(b *testing.B, path string, sealer *Sealer) *FileStore {
	b.Helper()
	s, err := OpenFileStore(path, FileStoreOptions{Sealer: sealer, PollInterval: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkFileStoreOpen100k: start-up of a 100,000-credential file store.
func BenchmarkFileStoreOpen100k(b *testing.B) {
	benchBothFormats(b, func(b *testing.B, path string, sealer *Sealer) {
		b.ReportAllocs()
		for b.Loop() {
			_ = openBenchStore(b, path, sealer).Close()
		}
	})
}

// BenchmarkFileStoreConcurrentUpdates100k: a refresh storm, 200 concurrent compare-and-swap
// updates of 200 companies on a 100,000-credential file store; one op is the whole storm.
func BenchmarkFileStoreConcurrentUpdates100k(b *testing.B) {
	benchBothFormats(b, func(b *testing.B, path string, sealer *Sealer) {
		s := openBenchStore(b, path, sealer)
		defer s.Close()
		round := 0
		for b.Loop() {
			round++
			var wg sync.WaitGroup
			for i := range 200 {
				c, err := s.Get(context.Background(), fmt.Sprintf("30000000-0000-4000-8000-%012d", i*500))
				if err != nil {
					b.Fatal(err)
				}
				c.RefreshToken = Secret(fmt.Sprintf("rt-%d-%d", round, i))
				wg.Go(func() {
					if _, err := s.Update(context.Background(), c); err != nil {
						b.Error(err)
					}
				})
			}
			wg.Wait()
		}
	})
}

// BenchmarkFileStoreGet100k: a cache miss's read of a 100,000-credential file store.
func BenchmarkFileStoreGet100k(b *testing.B) {
	benchBothFormats(b, func(b *testing.B, path string, sealer *Sealer) {
		s := openBenchStore(b, path, sealer)
		defer s.Close()
		ids := make([]string, 1000)
		for i := range ids {
			ids[i] = fmt.Sprintf("30000000-0000-4000-8000-%012d", i*97)
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := s.Get(context.Background(), ids[i%len(ids)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}
