package credentials

import (
	"errors"
	"path/filepath"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/metrics"
)

// testCreate is Create's conformance: every Creator adds a new company, refuses a stored one
// and a taken tenant, and of many concurrent creators of one company exactly one wins.
func testCreate(t *testing.T, newStore func(t *testing.T) Store) {
	t.Run("AddsOnce", func(t *testing.T) {
		s := newStore(t)
		t.Cleanup(func() { _ = s.Close() })
		if _, ok := s.(Creator); !ok {
			t.Fatalf("%T is not a Creator", s)
		}
		ctx := t.Context()
		c, err := Create(ctx, s, stOAuth(1, "t1"))
		if err != nil || c.Version != 1 {
			t.Fatalf("Create: %v, %v", c, err)
		}
		if got, err := s.Get(ctx, stCompany(1)); err != nil || got.TenantID != "t1" || got.RefreshToken != "refresh-1" {
			t.Fatalf("Get: %v, %v", got, err)
		}
		// A second create of the company, even for its own tenant, changes nothing.
		second := stOAuth(1, "t2")
		second.RefreshToken = "other"
		if _, err := Create(ctx, s, second); !errors.Is(err, ErrExists) {
			t.Fatalf("second Create: %v, want ErrExists", err)
		}
		if got, _ := s.Get(ctx, stCompany(1)); got.TenantID != "t1" || got.RefreshToken != "refresh-1" || got.Version != 1 {
			t.Fatalf("after the refused create: %v", got)
		}
		// Another company may not take the tenant.
		var fe *FieldError
		if _, err := Create(ctx, s, stOAuth(2, "t1")); !errors.As(err, &fe) || fe.Field != "tenant_id" {
			t.Fatalf("Create with a taken tenant: %v", err)
		}
		if _, err := s.Get(ctx, stCompany(2)); !errors.Is(err, ErrNotFound) {
			t.Fatalf("company 2 stored: %v", err)
		}
		if _, err := Create(ctx, s, Credential{CompanyID: "nope", Type: OAuth2}); err == nil {
			t.Fatal("an invalid credential was created")
		}
	})
	t.Run("ConcurrentCreatorsOneWins", func(t *testing.T) {
		s := newStore(t)
		t.Cleanup(func() { _ = s.Close() })
		const n = 8
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := range n {
			wg.Go(func() {
				_, errs[i] = Create(t.Context(), s, stOAuth(7, "tenant-"+string(rune('a'+i))))
			})
		}
		wg.Wait()
		won := -1
		for i, err := range errs {
			switch {
			case err == nil && won >= 0:
				t.Fatalf("creators %d and %d both won", won, i)
			case err == nil:
				won = i
			case !errors.Is(err, ErrExists):
				t.Fatalf("creator %d: %v", i, err)
			}
		}
		got, err := s.Get(t.Context(), stCompany(7))
		if won < 0 || err != nil || got.TenantID != "tenant-"+string(rune('a'+won)) || got.Version != 1 {
			t.Fatalf("winner %d, stored %v, %v", won, got, err)
		}
	})
}

func TestMemoryStoreCreate(t *testing.T) {
	testCreate(t, func(t *testing.T) Store { return NewMemoryStore() })
}

func TestFileStoreCreate(t *testing.T) {
	testCreate(t, func(t *testing.T) Store {
		return fsOpen(t, filepath.Join(t.TempDir(), "credentials.json"), FileStoreOptions{})
	})
}

func TestPGStoreCreate(t *testing.T) {
	db := pgTestDB(t)
	testCreate(t, func(t *testing.T) Store { return pgOpen(t, pgTestSchema(t, db), PGStoreOptions{Sealer: pgSealer(t)}) })
}

func TestInstrumentedStoreCreate(t *testing.T) {
	testCreate(t, func(t *testing.T) Store { return Instrument(NewMemoryStore(), metrics.New(prometheus.NewRegistry())) })
}
