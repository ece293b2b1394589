package credentials

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestPackRoundTrip(t *testing.T) {
	at := time.Date(2026, 11, 28, 12, 0, 0, 123456789, time.UTC)
	base := stOAuth(1, "erp-tenant-42")
	base.ExpiresAt, base.LastRefreshedAt, base.Version = at, at.Add(-time.Hour), 7
	with := func(f func(*Credential)) Credential {
		c := base
		f(&c)
		return normalizeCredential(c)
	}
	for _, tc := range []struct {
		name string
		c    Credential
	}{
		{"oauth2", with(func(*Credential) {})},
		{"integrated api key", normalizeCredential(stKey(2, IntegratedAPIKey))},
		{"standalone api key with expiry", with(func(c *Credential) {
			*c = stKey(3, StandaloneAPIKey)
			c.ExpiresAt = at
		})},
		{"zero times and version", with(func(c *Credential) { c.ExpiresAt, c.LastRefreshedAt, c.Version = time.Time{}, time.Time{}, 0 })},
		{"no tenant", with(func(c *Credential) { c.TenantID = "" })},
		{"tenant of 256 characters", with(func(c *Credential) { c.TenantID = strings.Repeat("t", 256) })},
		{"reauthorization required, last error", with(func(c *Credential) {
			c.State, c.LastError = StateReauthorizationRequired, "invalid_grant \u003c\x00 ü"
		})},
		{"year 0 and 9999", with(func(c *Credential) {
			c.ExpiresAt = time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)
			c.LastRefreshedAt = time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC)
		})},
		{"before 1970", with(func(c *Credential) { c.ExpiresAt = time.Date(1969, 12, 31, 23, 59, 59, 1, time.UTC) })},
		{"negative version", with(func(c *Credential) { c.Version = -1 })},
		{"largest version", with(func(c *Credential) { c.Version = math.MaxInt64 })},
		{"smallest version", with(func(c *Credential) { c.Version = math.MinInt64 })},
		{"base64url tokens, canonical", with(func(c *Credential) {
			c.AccessToken, c.RefreshToken = "q8Zr0tLWZ3s5Xk2e_-AAAAAAAAAAAAAAAAAAAAAAAAA", "AAAA"
		})},
		{"base64url tokens, loose last character", with(func(c *Credential) {
			c.AccessToken, c.RefreshToken = "q8Zr0tLWZ3s5Xk2e_-AAAAAAAAAAAAAAAAAAAAAAAAB", "AAAAB"
		})},
		{"tokens of 1 to 3 characters", with(func(c *Credential) { c.AccessToken, c.RefreshToken = "a", "abc" })},
		{"padded and standard base64", with(func(c *Credential) { c.AccessToken, c.RefreshToken = "YWJj==", "a+b/c+d/" })},
		{"a JWT", with(func(c *Credential) { c.AccessToken = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln" })},
		{"long api key", with(func(c *Credential) {
			*c = stKey(4, IntegratedAPIKey)
			c.APIKey = Secret(strings.Repeat("k", 5000))
		})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.c.Validate(); err != nil {
				t.Fatalf("the test credential is invalid: %v", err)
			}
			p, err := appendPacked(nil, tc.c)
			if err != nil {
				t.Fatal(err)
			}
			got, err := unpack(string(p), true)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.c) {
				t.Fatalf("unpack(pack(c)) =\n%#v, want\n%#v", fieldsOf(got), fieldsOf(tc.c))
			}
			// Without secrets: the same credential, its secrets empty.
			meta, err := unpack(string(p), false)
			if err != nil {
				t.Fatal(err)
			}
			if want := withoutSecrets(tc.c); !reflect.DeepEqual(meta, want) {
				t.Fatalf("unpack(pack(c), false) =\n%#v, want\n%#v", fieldsOf(meta), fieldsOf(want))
			}
			for _, cut := range []int{0, 1, packedKeyLen + 1, len(p) - 1} {
				if _, err := unpack(string(p[:cut]), true); !errors.Is(err, errPackedCorrupt) {
					t.Errorf("unpack of the first %d bytes: %v, want errPackedCorrupt", cut, err)
				}
			}
		})
	}
}

// fieldsOf shows a credential's fields, secrets included, for test failures.
func fieldsOf(c Credential) string {
	return fmt.Sprintf("{%s %q %s at=%q rt=%q key=%q exp=%s %s last=%s err=%q v%d}", c.CompanyID, c.TenantID, c.Type,
		c.AccessToken.Reveal(), c.RefreshToken.Reveal(), c.APIKey.Reveal(), c.ExpiresAt, c.State, c.LastRefreshedAt, c.LastError, c.Version)
}

func TestPackRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    Credential
	}{
		{"upper-case company id", Credential{CompanyID: strings.ToUpper(stCompany(1)), Type: OAuth2, State: StateActive, RefreshToken: "rt"}},
		{"not a UUID", Credential{CompanyID: "nope", Type: OAuth2, State: StateActive, RefreshToken: "rt"}},
		{"unknown type", Credential{CompanyID: stCompany(1), Type: "x", State: StateActive}},
		{"state not normalised", Credential{CompanyID: stCompany(1), Type: OAuth2, RefreshToken: "rt"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := appendPacked(nil, tc.c); err == nil {
				t.Fatal("packed")
			}
		})
	}
}

// Packed records are equal exactly when sameCredential says the credentials are, and packed
// company ids sort as their texts do: diffs and binary searches rely on both.
func TestPackedOrderAndEquality(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var ids []string
	for range 500 {
		ids = append(ids, fmt.Sprintf("%08x-%04x-%04x-%04x-%012x", rng.Uint32(), rng.Uint32()&0xffff, rng.Uint32()&0xffff,
			rng.Uint32()&0xffff, rng.Uint64()&0xffffffffffff))
	}
	ids = append(ids, "00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff", stCompany(9))
	keys := make([]string, len(ids))
	for i, id := range ids {
		k, ok := companyKey(strings.ToUpper(id))
		if !ok {
			t.Fatalf("companyKey(%q) refused", id)
		}
		keys[i] = string(k[:])
		if got := companyIDOf(keys[i]); got != id {
			t.Fatalf("companyIDOf(companyKey(%q)) = %q", id, got)
		}
	}
	slices.SortFunc(keys, strings.Compare)
	slices.Sort(ids)
	for i := range ids {
		if companyIDOf(keys[i]) != ids[i] {
			t.Fatalf("packed ids sort differently from their texts at %d", i)
		}
	}
	if _, ok := companyKey(stCompany(1) + " "); ok {
		t.Error("companyKey accepted a non-UUID")
	}

	a := normalizeCredential(stOAuth(1, "t"))
	a.ExpiresAt = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	variants := []func(*Credential){
		func(c *Credential) { c.TenantID = "u" },
		func(c *Credential) { c.AccessToken += "x" },
		func(c *Credential) { c.RefreshToken = "other" },
		func(c *Credential) { c.ExpiresAt = c.ExpiresAt.Add(time.Nanosecond) },
		func(c *Credential) { c.LastRefreshedAt = c.ExpiresAt },
		func(c *Credential) { c.State = StateReauthorizationRequired },
		func(c *Credential) { c.LastError = "e" },
		func(c *Credential) { c.Version++ },
		func(c *Credential) { c.ExpiresAt = c.ExpiresAt.In(time.FixedZone("x", 3600)) }, // same instant
	}
	pa, _ := appendPacked(nil, a)
	for i, f := range variants {
		b := a
		f(&b)
		b = normalizeCredential(b)
		pb, err := appendPacked(nil, b)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := bytes.Equal(pa, pb), sameCredential(a, b); got != want {
			t.Errorf("variant %d: packed equal %v, sameCredential %v", i, got, want)
		}
	}
}

func TestPackedSnapshot(t *testing.T) {
	var creds []Credential
	for i := range 300 {
		tenant := ""
		if i%3 != 0 {
			tenant = fmt.Sprintf("tenant-%03d", 299-i) // tenants sort in the other order
		}
		creds = append(creds, normalizeCredential(stOAuth(i, tenant)))
	}
	rand.Shuffle(len(creds), func(i, j int) { creds[i], creds[j] = creds[j], creds[i] })
	snap, err := packCredentials(creds)
	if err != nil {
		t.Fatal(err)
	}
	defer snap.release()
	if snap.len() != len(creds) {
		t.Fatalf("len %d, want %d", snap.len(), len(creds))
	}
	list := snap.list()
	if !slices.IsSortedFunc(list, func(a, b Credential) int { return strings.Compare(a.CompanyID, b.CompanyID) }) {
		t.Error("list is not ordered by company id")
	}
	for _, c := range creds {
		got, err := snap.get(strings.ToUpper(c.CompanyID))
		if err != nil || !reflect.DeepEqual(got, c) {
			t.Fatalf("get(%s) = %v, %v", c.CompanyID, fieldsOf(got), err)
		}
		if c.TenantID == "" {
			continue
		}
		if got, err := snap.getByTenant(c.TenantID); err != nil || got.CompanyID != c.CompanyID {
			t.Fatalf("getByTenant(%s) = %v, %v", c.TenantID, got, err)
		}
	}
	for _, miss := range []string{stCompany(300), "nope", ""} {
		if _, err := snap.get(miss); !errors.Is(err, ErrNotFound) {
			t.Errorf("get(%q): %v, want ErrNotFound", miss, err)
		}
	}
	for _, miss := range []string{"", "tenant-300", "tenant"} {
		if _, err := snap.getByTenant(miss); !errors.Is(err, ErrNotFound) {
			t.Errorf("getByTenant(%q): %v, want ErrNotFound", miss, err)
		}
	}

	// diffPacked agrees with diffCompanies.
	next := credentialMap(creds)
	delete(next, stCompany(5))
	c := next[stCompany(7)]
	c.RefreshToken = "rotated"
	next[c.CompanyID] = c
	added := normalizeCredential(stOAuth(1000, ""))
	next[added.CompanyID] = added
	snap2, err := packCredentials(slices.Collect(mapValues(next)))
	if err != nil {
		t.Fatal(err)
	}
	defer snap2.release()
	want := diffCompanies(credentialMap(creds), next)
	if got := diffPacked(snap, snap2); !slices.Equal(got, want) {
		t.Errorf("diffPacked = %v, want %v", got, want)
	}
}

func mapValues(m map[string]Credential) func(func(Credential) bool) {
	return func(yield func(Credential) bool) {
		for _, c := range m {
			if !yield(c) {
				return
			}
		}
	}
}

// A snapshot's memory is freed with its last reference, after which it cannot be acquired.
func TestPackedSnapshotReferences(t *testing.T) {
	snap, err := packCredentials([]Credential{stOAuth(1, "")})
	if err != nil {
		t.Fatal(err)
	}
	if !snap.tryAcquire() {
		t.Fatal("could not acquire a live snapshot")
	}
	snap.release() // the reader's
	if snap.mem.full == nil {
		t.Fatal("freed while referenced")
	}
	snap.release() // the builder's
	if snap.mem.full != nil || snap.idx.full != nil {
		t.Fatal("not freed with its last reference")
	}
	if snap.tryAcquire() {
		t.Fatal("acquired a freed snapshot")
	}
	empty := newEmptySnapshot()
	empty.release()
	if empty.tryAcquire() {
		t.Fatal("acquired a released empty snapshot")
	}
}

// The store mutations (mergeBatch, applyUpdate, applyDelete) give the same results and
// errors on a file store write's changes as on the memory store's map, over a random
// sequence of them: fileChanges keeps track of tenants and removals as a map does.
func TestFileChangesMatchMemoryStore(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	tenant := func() string {
		if rng.IntN(3) == 0 {
			return ""
		}
		return fmt.Sprintf("t%d", rng.IntN(12))
	}
	m := map[string]Credential{}
	snap := newEmptySnapshot()
	for round := range 60 {
		w := newFileChanges(snap)
		for range 1 + rng.IntN(6) {
			id := stCompany(rng.IntN(20))
			var errM, errW error
			switch op := rng.IntN(4); op {
			case 0, 1: // a batch, sometimes replacing everything
				var batch []Credential
				for range 1 + rng.IntN(4) {
					batch = append(batch, stOAuth(rng.IntN(20), tenant()))
				}
				prepared, err := prepareBatch(batch)
				if err != nil {
					continue // duplicates in the batch: refused before either
				}
				replace := rng.IntN(5) == 0
				errM, errW = mergeBatch(mapSet(m), prepared, replace), mergeBatch(w, prepared, replace)
			case 2:
				c := normalizeCredential(stOAuth(0, tenant()))
				c.CompanyID = id
				if stored, ok := m[id]; ok && rng.IntN(4) != 0 {
					c.Version = stored.Version
				}
				var gotM, gotW Credential
				gotM, errM = applyUpdate(mapSet(m), c)
				gotW, errW = applyUpdate(w, c)
				if !reflect.DeepEqual(gotM, gotW) {
					t.Fatalf("round %d: update returned %v, memory store %v", round, gotW, gotM)
				}
			case 3:
				errM, errW = applyDelete(mapSet(m), strings.ToUpper(id)), applyDelete(w, strings.ToUpper(id))
			}
			if fmt.Sprint(errM) != fmt.Sprint(errW) {
				t.Fatalf("round %d: error %v, memory store %v", round, errW, errM)
			}
		}
		if got := w.count(); got != len(m) {
			t.Fatalf("round %d: count %d, want %d", round, got, len(m))
		}
		next, err := w.build()
		if err != nil {
			t.Fatal(err)
		}
		if next != snap {
			snap.release()
			snap = next
		}
		want := newStoreSnapshot(maps2(m)).list()
		if got := snap.list(); !slices.EqualFunc(got, want, sameCredential) {
			t.Fatalf("round %d: built\n%v\nwant\n%v", round, got, want)
		}
		for _, c := range want {
			if c.TenantID == "" {
				continue
			}
			if got, err := snap.getByTenant(c.TenantID); err != nil || got.CompanyID != c.CompanyID {
				t.Fatalf("round %d: tenant %s gives %v, %v; want %s", round, c.TenantID, got, err, c.CompanyID)
			}
		}
	}
	snap.release()
}

func maps2(m map[string]Credential) map[string]Credential {
	out := make(map[string]Credential, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
