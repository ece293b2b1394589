package credentials

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// The conformance suite every Store runs. Helpers here are prefixed st to keep clear of other
// tests in the package.

// stCompany returns a valid company id numbered n.
func stCompany(n int) string { return fmt.Sprintf("5a1c0000-0000-4000-8000-%012d", n) }

// stOAuth returns a valid oauth2 credential for company n.
func stOAuth(n int, tenant string) Credential {
	return Credential{
		CompanyID:    stCompany(n),
		TenantID:     tenant,
		Type:         OAuth2,
		AccessToken:  Secret(fmt.Sprintf("access-%d", n)),
		RefreshToken: Secret(fmt.Sprintf("refresh-%d", n)),
		ExpiresAt:    time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC),
	}
}

// stKey returns a valid API key credential for company n.
func stKey(n int, typ Type) Credential {
	return Credential{CompanyID: stCompany(n), Type: typ, APIKey: Secret(fmt.Sprintf("key-%d", n))}
}

// stWaitFor polls cond until it holds or a generous deadline passes.
func stWaitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// stEvents records the company ids a subscriber is told about.
type stEvents struct {
	mu  sync.Mutex
	ids []string
}

func (e *stEvents) record(id string) {
	e.mu.Lock()
	e.ids = append(e.ids, id)
	e.mu.Unlock()
}

// saw reports whether id (or "", meaning everything) was announced.
func (e *stEvents) saw(id string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Contains(e.ids, id) || slices.Contains(e.ids, "")
}

// announced reports whether id itself was announced.
func (e *stEvents) announced(id string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Contains(e.ids, id)
}

func (e *stEvents) reset() {
	e.mu.Lock()
	e.ids = nil
	e.mu.Unlock()
}

func (e *stEvents) count() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.ids)
}

// stIDs returns the company ids of creds, in order.
func stIDs(creds []Credential) []string {
	ids := make([]string, len(creds))
	for i, c := range creds {
		ids[i] = c.CompanyID
	}
	return ids
}

// testStoreConformance checks the behaviour every Store promises. newStore returns a new,
// empty store; the suite closes it.
func testStoreConformance(t *testing.T, newStore func(t *testing.T) Store) {
	open := func(t *testing.T) Store {
		t.Helper()
		s := newStore(t)
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	put := func(t *testing.T, s Store, creds ...Credential) {
		t.Helper()
		if err := s.PutAll(t.Context(), creds, false); err != nil {
			t.Fatalf("PutAll: %v", err)
		}
	}
	get := func(t *testing.T, s Store, n int) Credential {
		t.Helper()
		c, err := s.Get(t.Context(), stCompany(n))
		if err != nil {
			t.Fatalf("Get(%d): %v", n, err)
		}
		return c
	}

	t.Run("Empty", func(t *testing.T) {
		s := open(t)
		ctx := t.Context()
		if err := s.Ping(ctx); err != nil {
			t.Errorf("Ping: %v", err)
		}
		if _, err := s.Get(ctx, stCompany(1)); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get: %v, want ErrNotFound", err)
		}
		if _, err := s.GetByTenant(ctx, "t1"); !errors.Is(err, ErrNotFound) {
			t.Errorf("GetByTenant: %v, want ErrNotFound", err)
		}
		if _, err := s.GetByTenant(ctx, ""); !errors.Is(err, ErrNotFound) {
			t.Errorf("GetByTenant(\"\"): %v, want ErrNotFound", err)
		}
		if list, err := s.List(ctx); err != nil || len(list) != 0 {
			t.Errorf("List = %v, %v; want empty", list, err)
		}
		if err := s.Delete(ctx, stCompany(1)); !errors.Is(err, ErrNotFound) {
			t.Errorf("Delete: %v, want ErrNotFound", err)
		}
		if _, err := s.Update(ctx, stOAuth(1, "")); !errors.Is(err, ErrNotFound) {
			t.Errorf("Update: %v, want ErrNotFound", err)
		}
	})

	t.Run("PutAllGetList", func(t *testing.T) {
		s := open(t)
		ctx := t.Context()
		in := []Credential{stKey(3, StandaloneAPIKey), stOAuth(1, "tenant-1"), stKey(2, IntegratedAPIKey)}
		in[0].ExpiresAt = time.Date(2027, 1, 1, 0, 0, 0, 0, time.FixedZone("CET", 3600))
		put(t, s, in...)

		c := get(t, s, 1)
		want := stOAuth(1, "tenant-1")
		want.State, want.Version = StateActive, 1
		if !sameCredential(c, want) {
			t.Errorf("Get(1) = %#v (secrets %q %q), want %#v", c, c.AccessToken.Reveal(), c.RefreshToken.Reveal(), want)
		}
		if k := get(t, s, 3); k.APIKey.Reveal() != "key-3" || k.Type != StandaloneAPIKey || !k.ExpiresAt.Equal(in[0].ExpiresAt) || k.Version != 1 {
			t.Errorf("Get(3) = %v, expires %v", k, k.ExpiresAt)
		}
		upper := strings.ToUpper(stCompany(2))
		if k, err := s.Get(ctx, upper); err != nil || k.CompanyID != stCompany(2) {
			t.Errorf("Get(%s) = %v, %v; want company %s", upper, k, err, stCompany(2))
		}
		if bt, err := s.GetByTenant(ctx, "tenant-1"); err != nil || bt.CompanyID != stCompany(1) {
			t.Errorf("GetByTenant = %v, %v", bt, err)
		}
		if _, err := s.GetByTenant(ctx, "tenant-2"); !errors.Is(err, ErrNotFound) {
			t.Errorf("GetByTenant(unknown): %v, want ErrNotFound", err)
		}
		list, err := s.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := stIDs(list), []string{stCompany(1), stCompany(2), stCompany(3)}; !slices.Equal(got, want) {
			t.Errorf("List ids = %v, want %v", got, want)
		}
	})

	t.Run("Scan", func(t *testing.T) {
		s := open(t)
		put(t, s, stOAuth(3, "t3"), stOAuth(1, "t1"), stOAuth(2, "t2"), stKey(4, IntegratedAPIKey))
		var seen []Credential
		if err := Scan(t.Context(), s, func(c Credential) bool { seen = append(seen, c); return true }); err != nil {
			t.Fatalf("Scan: %v", err)
		}
		list, err := s.List(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(stIDs(seen), stIDs(list)) || len(seen) != 4 {
			t.Fatalf("Scan saw %v, List has %v", stIDs(seen), stIDs(list))
		}
		// Everything but the secrets, which Scan never hands out.
		for i := range seen {
			if want := withoutSecrets(list[i]); !sameCredential(seen[i], want) {
				t.Fatalf("Scan gave %+v for %+v", seen[i], want)
			}
			if !seen[i].AccessToken.IsZero() || !seen[i].RefreshToken.IsZero() || !seen[i].APIKey.IsZero() {
				t.Fatalf("Scan handed out a secret of %s", seen[i].CompanyID)
			}
		}
		n := 0
		if err := Scan(t.Context(), s, func(Credential) bool { n++; return n < 2 }); err != nil || n != 2 {
			t.Fatalf("Scan stopped after %d calls (%v), want 2", n, err)
		}
	})

	t.Run("PutAllMergeAndReplace", func(t *testing.T) {
		s := open(t)
		ctx := t.Context()
		put(t, s, stOAuth(1, "a"), stOAuth(2, "b"))
		b := stOAuth(2, "b2")
		b.RefreshToken = "refresh-2b"
		b.Version = 42 // ignored by PutAll
		put(t, s, b, stOAuth(3, ""))
		list, _ := s.List(ctx)
		if got, want := stIDs(list), []string{stCompany(1), stCompany(2), stCompany(3)}; !slices.Equal(got, want) {
			t.Fatalf("after merge, ids = %v, want %v", got, want)
		}
		if c := get(t, s, 2); c.RefreshToken.Reveal() != "refresh-2b" || c.Version != 2 || c.TenantID != "b2" {
			t.Errorf("replaced record = %v tenant %q", c, c.TenantID)
		}
		if c := get(t, s, 1); c.Version != 1 {
			t.Errorf("untouched record version = %d, want 1", c.Version)
		}
		if _, err := s.GetByTenant(ctx, "b"); !errors.Is(err, ErrNotFound) {
			t.Errorf("old tenant still resolves: %v", err)
		}
		// A tenant freed by a replaced record can be taken by another in the same batch.
		if err := s.PutAll(ctx, []Credential{stOAuth(3, "a"), stOAuth(1, "")}, false); err != nil {
			t.Fatalf("tenant swap: %v", err)
		}

		if err := s.PutAll(ctx, []Credential{stOAuth(3, "c")}, true); err != nil {
			t.Fatal(err)
		}
		list, _ = s.List(ctx)
		if got, want := stIDs(list), []string{stCompany(3)}; !slices.Equal(got, want) {
			t.Fatalf("after replaceAll, ids = %v, want %v", got, want)
		}
		if c := get(t, s, 3); c.Version != 3 {
			t.Errorf("replaceAll version = %d, want 3 (it was stored at 2)", c.Version)
		}
		if _, err := s.Get(ctx, stCompany(1)); !errors.Is(err, ErrNotFound) {
			t.Errorf("removed company: %v, want ErrNotFound", err)
		}
		if err := s.PutAll(ctx, nil, true); err != nil {
			t.Fatal(err)
		}
		if list, _ := s.List(ctx); len(list) != 0 {
			t.Errorf("replaceAll with nothing left %v", list)
		}
	})

	t.Run("PutAllAllOrNothing", func(t *testing.T) {
		noRefresh := stOAuth(5, "")
		noRefresh.RefreshToken = ""
		badID := stOAuth(5, "")
		badID.CompanyID = "not-a-uuid"
		badType := stKey(5, "password")
		tokenInKey := stKey(5, IntegratedAPIKey)
		tokenInKey.AccessToken = "x"
		spaceKey := stKey(5, IntegratedAPIKey)
		spaceKey.APIKey = "has space"
		cases := []struct {
			name  string
			batch []Credential
		}{
			{"missing refresh token", []Credential{stOAuth(4, ""), noRefresh}},
			{"invalid company id", []Credential{stOAuth(4, ""), badID}},
			{"unknown type", []Credential{stOAuth(4, ""), badType}},
			{"token on an API key", []Credential{stOAuth(4, ""), tokenInKey}},
			{"secret with a space", []Credential{stOAuth(4, ""), spaceKey}},
			{"duplicate company", []Credential{stOAuth(4, ""), stOAuth(4, "")}},
			{"duplicate company in another case", []Credential{stOAuth(4, ""), func() Credential {
				c := stOAuth(4, "")
				c.CompanyID = strings.ToUpper(c.CompanyID)
				return c
			}()}},
			{"duplicate tenant in the batch", []Credential{stOAuth(4, "x"), stOAuth(5, "x")}},
			{"tenant of a stored company", []Credential{stOAuth(4, ""), stOAuth(5, "tenant-1")}},
		}
		for _, tc := range cases {
			for _, replaceAll := range []bool{false, true} {
				if tc.name == "tenant of a stored company" && replaceAll {
					continue // with replaceAll company 1 goes away, freeing its tenant
				}
				t.Run(fmt.Sprintf("%s/replaceAll=%v", tc.name, replaceAll), func(t *testing.T) {
					s := open(t)
					ctx := t.Context()
					put(t, s, stOAuth(1, "tenant-1"), stKey(2, IntegratedAPIKey))
					before, _ := s.List(ctx)
					if err := s.PutAll(ctx, tc.batch, replaceAll); err == nil {
						t.Fatal("PutAll succeeded, want an error")
					} else if errors.Is(err, ErrConflict) || errors.Is(err, ErrNotFound) {
						t.Errorf("PutAll: %v, want a validation error", err)
					}
					after, _ := s.List(ctx)
					if !slices.EqualFunc(before, after, sameCredential) {
						t.Errorf("a failed PutAll changed the store: %v -> %v", before, after)
					}
				})
			}
		}
	})

	t.Run("UpdateCompareAndSwap", func(t *testing.T) {
		s := open(t)
		ctx := t.Context()
		put(t, s, stOAuth(1, "tenant-1"), stOAuth(2, "tenant-2"))
		c := get(t, s, 1)
		c.RefreshToken = "rotated-1"
		c.AccessToken = "access-1b"
		c.LastRefreshedAt = time.Date(2026, 11, 28, 11, 0, 0, 0, time.UTC)
		updated, err := s.Update(ctx, c)
		if err != nil {
			t.Fatalf("Update: %v", err)
		}
		if updated.Version != c.Version+1 || updated.RefreshToken.Reveal() != "rotated-1" {
			t.Errorf("Update returned %v, want version %d", updated, c.Version+1)
		}
		if got := get(t, s, 1); !sameCredential(got, updated) {
			t.Errorf("Get after Update = %v, want %v", got, updated)
		}

		stale := c // still at the old version
		stale.RefreshToken = "lost"
		if _, err := s.Update(ctx, stale); !errors.Is(err, ErrConflict) {
			t.Errorf("stale Update: %v, want ErrConflict", err)
		}
		if got := get(t, s, 1); got.RefreshToken.Reveal() != "rotated-1" {
			t.Errorf("a stale Update changed the record")
		}

		missing := stOAuth(9, "")
		missing.Version = 1
		if _, err := s.Update(ctx, missing); !errors.Is(err, ErrNotFound) {
			t.Errorf("Update of a missing company: %v, want ErrNotFound", err)
		}

		invalid := updated
		invalid.RefreshToken = ""
		if _, err := s.Update(ctx, invalid); err == nil || errors.Is(err, ErrConflict) || errors.Is(err, ErrNotFound) {
			t.Errorf("invalid Update: %v, want a validation error", err)
		}
		taken := updated
		taken.TenantID = "tenant-2"
		if _, err := s.Update(ctx, taken); err == nil || errors.Is(err, ErrConflict) {
			t.Errorf("Update to another company's tenant: %v, want an error", err)
		}
		if got := get(t, s, 1); !sameCredential(got, updated) {
			t.Errorf("failed Updates changed the record: %v", got)
		}

		// The state and error fields round-trip.
		r := updated
		r.State, r.LastError = StateReauthorizationRequired, "invalid_grant"
		r2, err := s.Update(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		if got := get(t, s, 1); got.State != StateReauthorizationRequired || got.LastError != "invalid_grant" || got.Version != r2.Version {
			t.Errorf("Get = %v state %q error %q", got, got.State, got.LastError)
		}
	})

	t.Run("Delete", func(t *testing.T) {
		s := open(t)
		ctx := t.Context()
		put(t, s, stOAuth(1, "tenant-1"), stOAuth(2, ""))
		if err := s.Delete(ctx, strings.ToUpper(stCompany(1))); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		if _, err := s.Get(ctx, stCompany(1)); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get after Delete: %v", err)
		}
		if _, err := s.GetByTenant(ctx, "tenant-1"); !errors.Is(err, ErrNotFound) {
			t.Errorf("GetByTenant after Delete: %v", err)
		}
		if err := s.Delete(ctx, stCompany(1)); !errors.Is(err, ErrNotFound) {
			t.Errorf("second Delete: %v, want ErrNotFound", err)
		}
		if list, _ := s.List(ctx); !slices.Equal(stIDs(list), []string{stCompany(2)}) {
			t.Errorf("List = %v", list)
		}
	})

	t.Run("Subscribe", func(t *testing.T) {
		s := open(t)
		ctx := t.Context()
		var ev stEvents
		var reads sync.WaitGroup
		unsubscribe := s.Subscribe(func(id string) {
			ev.record(id)
			// A subscriber may read the store: it is called outside the store's locks.
			reads.Add(1)
			go func() { defer reads.Done(); _, _ = s.Get(ctx, id) }()
			_, _ = s.List(ctx)
		})
		defer reads.Wait()

		put(t, s, stOAuth(1, ""), stOAuth(2, ""))
		stWaitFor(t, "PutAll events", func() bool { return ev.saw(stCompany(1)) && ev.saw(stCompany(2)) })

		ev.reset()
		c, err := s.Update(ctx, get(t, s, 2))
		if err != nil {
			t.Fatal(err)
		}
		stWaitFor(t, "Update event", func() bool { return ev.saw(stCompany(2)) })

		ev.reset()
		if err := s.Delete(ctx, c.CompanyID); err != nil {
			t.Fatal(err)
		}
		stWaitFor(t, "Delete event", func() bool { return ev.saw(stCompany(2)) })

		ev.reset()
		if err := s.PutAll(ctx, []Credential{stOAuth(3, "")}, true); err != nil {
			t.Fatal(err)
		}
		stWaitFor(t, "replaceAll events", func() bool { return ev.saw(stCompany(1)) && ev.saw(stCompany(3)) })

		unsubscribe()
		unsubscribe() // idempotent
		ev.reset()
		put(t, s, stOAuth(4, ""))
		if _, err := s.Update(ctx, get(t, s, 4)); err != nil {
			t.Fatal(err)
		}
		// Stores may deliver asynchronously: give a late event a moment to show up.
		time.Sleep(50 * time.Millisecond)
		if n := ev.count(); n != 0 {
			t.Errorf("%d events after unsubscribe", n)
		}
	})

	t.Run("ConcurrentUpdateOneWinner", func(t *testing.T) {
		s := open(t)
		ctx := t.Context()
		put(t, s, stOAuth(1, ""))
		start := get(t, s, 1)
		const n = 20
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := range n {
			wg.Go(func() {
				c := start
				c.RefreshToken = Secret(fmt.Sprintf("rotated-%d", i))
				_, errs[i] = s.Update(ctx, c)
			})
		}
		wg.Wait()
		winners := 0
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil:
				winners++
				winner = i
			case errors.Is(err, ErrConflict):
			default:
				t.Errorf("Update %d: %v, want nil or ErrConflict", i, err)
			}
		}
		if winners != 1 {
			t.Fatalf("%d updates won, want exactly 1", winners)
		}
		got := get(t, s, 1)
		if got.Version != start.Version+1 || got.RefreshToken.Reveal() != fmt.Sprintf("rotated-%d", winner) {
			t.Errorf("stored %v, want the winner's token at version %d", got, start.Version+1)
		}
	})

	t.Run("ReturnsCopies", func(t *testing.T) {
		s := open(t)
		ctx := t.Context()
		in := []Credential{stOAuth(1, "tenant-1"), stOAuth(2, "")}
		put(t, s, in...)
		in[0].RefreshToken = "mutated-input" // the store must not keep the caller's slice
		c := get(t, s, 1)
		c.RefreshToken = "mutated"
		c.TenantID = "other"
		c.Version = 99
		list, _ := s.List(ctx)
		list[0].RefreshToken = "mutated-list"
		list[1] = stOAuth(7, "")
		got := get(t, s, 1)
		if got.RefreshToken.Reveal() != "refresh-1" || got.TenantID != "tenant-1" || got.Version != 1 {
			t.Errorf("mutating returned values changed the store: %v", got)
		}
		if list, _ := s.List(ctx); !slices.Equal(stIDs(list), []string{stCompany(1), stCompany(2)}) || list[0].RefreshToken.Reveal() != "refresh-1" {
			t.Errorf("List after mutation = %v", list)
		}
		if bt, _ := s.GetByTenant(ctx, "tenant-1"); bt.RefreshToken.Reveal() != "refresh-1" {
			t.Errorf("GetByTenant after mutation = %v", bt)
		}
	})

	t.Run("CanceledContextWritesNothing", func(t *testing.T) {
		s := open(t)
		put(t, s, stOAuth(1, ""))
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if err := s.PutAll(ctx, []Credential{stOAuth(2, "")}, false); err == nil {
			t.Error("PutAll with a canceled context succeeded")
		}
		if _, err := s.Get(t.Context(), stCompany(2)); !errors.Is(err, ErrNotFound) {
			t.Errorf("a canceled PutAll wrote: %v", err)
		}
	})
}
