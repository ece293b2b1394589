package connect

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"
)

func testState(tenant string) flowState {
	return flowState{
		ID:       [16]byte{1, 2, 3},
		Browser:  [16]byte{9, 9, 9},
		IssuedAt: time.Unix(1_900_000_000, 0),
		Verifier: strings.Repeat("v", 43),
		Tenant:   tenant,
	}
}

func mustSealer(t *testing.T, ad string, keys ...[]byte) *sealer {
	t.Helper()
	s, err := newSealer(keys, ad)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStateSealOpen(t *testing.T) {
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	current := mustSealer(t, "ad", k1)
	for _, tenant := range []string{"t", "", "<ü\u2028>", strings.Repeat("x", 256)} {
		st := testState(tenant)
		text, err := current.seal(st)
		if err != nil {
			t.Fatal(err)
		}
		got, err := current.open(text)
		if err != nil || got != st {
			t.Fatalf("round trip %q: %+v, %v", tenant, got, err)
		}
		if strings.Contains(text, tenant) && tenant != "" && tenant != "t" {
			t.Fatal("the tenant shows in the sealed state")
		}
	}

	sealed, _ := current.seal(testState("t"))
	raw, _ := base64.RawURLEncoding.DecodeString(sealed)
	flip := func(i int) string {
		b := bytes.Clone(raw)
		b[i] ^= 0x80
		return base64.RawURLEncoding.EncodeToString(b)
	}
	for name, c := range map[string]struct {
		s    *sealer
		text string
		ok   bool
	}{
		"rotated: new key seals, old opens": {mustSealer(t, "ad", k2, k1), sealed, true},
		"other key":                         {mustSealer(t, "ad", k2), sealed, false},
		"other deployment (ad)":             {mustSealer(t, "other", k1), sealed, false},
		"nonce flipped":                     {current, flip(0), false},
		"ciphertext flipped":                {current, flip(20), false},
		"tag flipped":                       {current, flip(len(raw) - 1), false},
		"truncated":                         {current, sealed[:len(sealed)-4], false},
		"too short":                         {current, "AAAA", false},
		"not base64url":                     {current, sealed[:10] + "+/" + sealed[12:], false},
		"empty":                             {current, "", false},
		"huge":                              {current, strings.Repeat("A", maxStateLen+1), false},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := c.s.open(c.text)
			if c.ok != (err == nil) || (err != nil && !errors.Is(err, ErrStateInvalid)) {
				t.Fatalf("open: %v, want ok=%v", err, c.ok)
			}
		})
	}

	// Without keys each sealer has its own random key: another process cannot open.
	a, b := mustSealer(t, "ad"), mustSealer(t, "ad")
	text, _ := a.seal(testState("t"))
	if _, err := b.open(text); err == nil {
		t.Fatal("a random-key sealer opened another's state")
	}
	if _, err := a.open(text); err != nil {
		t.Fatal(err)
	}
}

func TestStateCheck(t *testing.T) {
	st := testState("t")
	issued := st.IssuedAt
	for _, c := range []struct {
		name    string
		now     time.Time
		browser []byte
		want    error
	}{
		{"just issued", issued, st.Browser[:], nil},
		{"at ten minutes", issued.Add(StateTTL), st.Browser[:], nil},
		{"a second past ten minutes", issued.Add(StateTTL + time.Second), st.Browser[:], ErrStateExpired},
		{"a day later", issued.Add(24 * time.Hour), st.Browser[:], ErrStateExpired},
		{"slightly in the future (another replica's clock)", issued.Add(-30 * time.Second), st.Browser[:], nil},
		{"far in the future", issued.Add(-2 * time.Minute), st.Browser[:], ErrStateInvalid},
		{"other browser", issued, make([]byte, 16), ErrStateBrowser},
		{"no cookie", issued, nil, ErrStateBrowser},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := st.check(c.now, c.browser); !errors.Is(err, c.want) || (c.want == nil && err != nil) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

func TestUsedStates(t *testing.T) {
	now := time.Unix(1_900_000_000, 0)
	u := newUsedStates(3)
	id := func(b byte) [16]byte { return [16]byte{b} }
	for i := byte(1); i <= 3; i++ {
		if err := u.use(id(i), now.Add(time.Duration(i)*time.Minute), now); err != nil {
			t.Fatal(err)
		}
	}
	if err := u.use(id(2), now.Add(time.Hour), now); !errors.Is(err, ErrStateUsed) {
		t.Fatalf("reuse: %v", err)
	}
	// Full of unexpired ids: refuse rather than forget one.
	if err := u.use(id(4), now.Add(time.Hour), now); !errors.Is(err, ErrBusy) {
		t.Fatalf("full: %v", err)
	}
	// Once some expire they are pruned and room is made.
	later := now.Add(2*time.Minute + time.Second)
	if err := u.use(id(4), later.Add(StateTTL), later); err != nil {
		t.Fatalf("after expiry: %v", err)
	}
	if u.len() != 2 {
		t.Fatalf("held %d ids, want 2 (3 and 4)", u.len())
	}
	if err := u.use(id(3), later.Add(StateTTL), later); !errors.Is(err, ErrStateUsed) {
		t.Fatalf("an unexpired id was forgotten: %v", err)
	}
}
