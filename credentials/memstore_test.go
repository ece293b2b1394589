package credentials

import (
	"fmt"
	"sync"
	"testing"
)

func TestMemoryStoreConformance(t *testing.T) {
	testStoreConformance(t, func(t *testing.T) Store { return NewMemoryStore() })
}

func TestMemoryStoreVersions(t *testing.T) {
	s := NewMemoryStore()
	ctx := t.Context()
	if err := s.PutAll(ctx, []Credential{stOAuth(1, "")}, false); err != nil {
		t.Fatal(err)
	}
	for want := int64(1); want <= 5; want++ {
		c, err := s.Get(ctx, stCompany(1))
		if err != nil {
			t.Fatal(err)
		}
		if c.Version != want {
			t.Fatalf("version = %d, want %d", c.Version, want)
		}
		if want%2 == 0 {
			err = s.PutAll(ctx, []Credential{c}, false)
		} else {
			_, err = s.Update(ctx, c)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// A subscriber is called after the change, so reading the store from the callback sees it.
func TestMemoryStoreSubscriberSeesChange(t *testing.T) {
	s := NewMemoryStore()
	ctx := t.Context()
	var seen []int64
	s.Subscribe(func(id string) {
		c, err := s.Get(ctx, id)
		if err != nil {
			seen = append(seen, -1)
			return
		}
		seen = append(seen, c.Version)
	})
	if err := s.PutAll(ctx, []Credential{stOAuth(1, "")}, false); err != nil {
		t.Fatal(err)
	}
	c, _ := s.Get(ctx, stCompany(1))
	if _, err := s.Update(ctx, c); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, stCompany(1)); err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(seen), "[1 2 -1]"; got != want {
		t.Errorf("versions seen by the subscriber = %s, want %s", got, want)
	}
}

// Readers and writers race freely (run with -race).
func TestMemoryStoreConcurrentReadWrite(t *testing.T) {
	s := NewMemoryStore()
	ctx := t.Context()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 50 {
				n := i*100 + j%5
				_ = s.PutAll(ctx, []Credential{stOAuth(n, fmt.Sprintf("t-%d", n))}, false)
				if c, err := s.Get(ctx, stCompany(n)); err == nil {
					_, _ = s.Update(ctx, c)
				}
				_, _ = s.GetByTenant(ctx, fmt.Sprintf("t-%d", n))
				_, _ = s.List(ctx)
				if j%7 == 0 {
					_ = s.Delete(ctx, stCompany(n))
				}
			}
		})
	}
	wg.Wait()
}
