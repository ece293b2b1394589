package credentials

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// testKey returns a deterministic 32-byte key named by n.
func testKey(n int) []byte {
	sum := sha256.Sum256([]byte(fmt.Sprintf("pleo-auth-proxy test key %d", n)))
	return sum[:]
}

func testSealer(t testing.TB, keys ...[]byte) *Sealer {
	t.Helper()
	s, err := NewSealer(keys)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var sealedPattern = regexp.MustCompile(`^v1\.[0-9a-f]{16}\.[A-Za-z0-9_-]+$`)

func TestSealerRoundTrip(t *testing.T) {
	s := testSealer(t, testKey(1))
	company := stCompany(1)
	cases := []struct {
		name  string
		field string
		plain []byte
	}{
		{"empty", FieldAPIKey, nil},
		{"one byte", FieldAPIKey, []byte("k")},
		{"access token", FieldAccessToken, []byte("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl")},
		{"refresh token", FieldRefreshToken, []byte("rt_0123456789abcdef")},
		{"binary", "other_field", []byte{0, 1, 2, 0xff, '\n', 0x80}},
		{"long", FieldAPIKey, bytes.Repeat([]byte("x"), 10000)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sealed, err := s.Seal(company, tc.field, tc.plain)
			if err != nil {
				t.Fatal(err)
			}
			if !sealedPattern.MatchString(sealed) {
				t.Errorf("sealed value %q does not have the v1.<key id>.<base64url> form", sealed)
			}
			if !IsSealed(sealed) {
				t.Error("IsSealed = false for a sealed value")
			}
			if id, err := SealedKeyID(sealed); err != nil || id != s.KeyID() {
				t.Errorf("SealedKeyID = %q, %v; want %q", id, err, s.KeyID())
			}
			got, err := s.Open(company, tc.field, sealed)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if !bytes.Equal(got, tc.plain) {
				t.Errorf("Open = %q, want %q", got, tc.plain)
			}
			// Company ids compare in either case, as everywhere else.
			if got, err := s.Open(strings.ToUpper(company), tc.field, sealed); err != nil || !bytes.Equal(got, tc.plain) {
				t.Errorf("Open with the company id upper-cased = %q, %v", got, err)
			}
			again, _ := s.Seal(company, tc.field, tc.plain)
			if again == sealed {
				t.Error("two seals of one value are identical: the nonce is not random")
			}
			if len(tc.plain) > 3 && strings.Contains(sealed, string(tc.plain)) {
				t.Error("the sealed value contains the plaintext")
			}
		})
	}
}

func TestKeyID(t *testing.T) {
	key := testKey(1)
	sum := sha256.Sum256(key)
	if got, want := KeyID(key), hex.EncodeToString(sum[:8]); got != want {
		t.Errorf("KeyID = %s, want %s (the first 8 bytes of SHA-256, hex)", got, want)
	}
	s := testSealer(t, testKey(2), testKey(1))
	if s.KeyID() != KeyID(testKey(2)) {
		t.Errorf("Sealer.KeyID is not the first key's")
	}
	if ids := s.KeyIDs(); len(ids) != 2 || ids[1] != KeyID(key) {
		t.Errorf("KeyIDs = %v", ids)
	}
}

func TestNewSealerRejects(t *testing.T) {
	cases := []struct {
		name string
		keys [][]byte
		want string
	}{
		{"no key", nil, "no encryption key"},
		{"short key", [][]byte{make([]byte, 16)}, "is 16 bytes, want 32"},
		{"long key", [][]byte{testKey(1), make([]byte, 33)}, "key 2 of 2 is 33 bytes"},
		{"repeated key", [][]byte{testKey(1), testKey(2), testKey(1)}, "key 3 of 3 repeats key 1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewSealer(tc.keys)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewSealer = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// Every single-byte change to a sealed value, anywhere in it, is detected, and so is every
// truncation and extension.
func TestSealerDetectsTampering(t *testing.T) {
	s := testSealer(t, testKey(1), testKey(2))
	company := stCompany(1)
	sealed, err := s.Seal(company, FieldRefreshToken, []byte("refresh-token-value"))
	if err != nil {
		t.Fatal(err)
	}
	var tampered []string
	for i := range len(sealed) {
		for _, mask := range []byte{0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80} {
			b := []byte(sealed)
			b[i] ^= mask
			tampered = append(tampered, string(b))
		}
		for _, c := range []byte{'\n', '\r', '=', '.', ' ', 0} {
			b := []byte(sealed)
			b[i] = c
			tampered = append(tampered, string(b))
			tampered = append(tampered, sealed[:i]+string(c)+sealed[i:]) // inserted
		}
		tampered = append(tampered, sealed[:i], sealed[:i]+sealed[i+1:]) // truncated, one removed
	}
	tampered = append(tampered, sealed+"A", sealed+"=", sealed+"\n", " "+sealed, strings.ToUpper(sealed))
	// The same data under the other key's id.
	tampered = append(tampered, SealedPrefix+KeyID(testKey(2))+sealed[len(SealedPrefix)+KeyIDLength:])
	for _, v := range tampered {
		if v == sealed {
			continue
		}
		got, err := s.Open(company, FieldRefreshToken, v)
		if err == nil {
			t.Fatalf("Open accepted the altered value %q (-> %q)", v, got)
		}
		if !errors.Is(err, ErrSealedFormat) && !errors.Is(err, ErrSealedAuthentication) && !errors.Is(err, ErrSealedUnknownKey) {
			t.Fatalf("Open(%q) = %v, not one of the documented errors", v, err)
		}
		if strings.Contains(err.Error(), "refresh-token-value") {
			t.Fatalf("error leaks the plaintext: %v", err)
		}
	}
	t.Logf("%d altered values refused", len(tampered))
}

func TestSealerRefusesMovedValues(t *testing.T) {
	s := testSealer(t, testKey(1))
	sealed, err := s.Seal(stCompany(1), FieldAPIKey, []byte("key-of-company-1"))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, company, field string
	}{
		{"another company", stCompany(2), FieldAPIKey},
		{"another field", stCompany(1), FieldAccessToken},
		{"another company and field", stCompany(2), FieldRefreshToken},
		{"empty company", "", FieldAPIKey},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := s.Open(tc.company, tc.field, sealed); !errors.Is(err, ErrSealedAuthentication) {
				t.Errorf("Open = %v, want ErrSealedAuthentication", err)
			}
		})
	}
}

func TestSealerWrongKeyAndRotation(t *testing.T) {
	oldKey, newKey := testKey(1), testKey(2)
	old := testSealer(t, oldKey)
	sealedOld, _ := old.Seal(stCompany(1), FieldAPIKey, []byte("k1"))

	// Only the new key: refused, naming both key ids (which are not secret).
	_, err := testSealer(t, newKey).Open(stCompany(1), FieldAPIKey, sealedOld)
	if !errors.Is(err, ErrSealedUnknownKey) || !strings.Contains(err.Error(), KeyID(oldKey)) || !strings.Contains(err.Error(), KeyID(newKey)) {
		t.Errorf("Open with the wrong key = %v, want ErrSealedUnknownKey naming both key ids", err)
	}

	// New and old: reads the old, writes with the new.
	both := testSealer(t, newKey, oldKey)
	if got, err := both.Open(stCompany(1), FieldAPIKey, sealedOld); err != nil || string(got) != "k1" {
		t.Errorf("Open with new,old = %q, %v", got, err)
	}
	sealedNew, _ := both.Seal(stCompany(1), FieldAPIKey, []byte("k1"))
	if id, _ := SealedKeyID(sealedNew); id != KeyID(newKey) {
		t.Errorf("sealed with key %s, want the first (%s)", id, KeyID(newKey))
	}
	if _, err := old.Open(stCompany(1), FieldAPIKey, sealedNew); !errors.Is(err, ErrSealedUnknownKey) {
		t.Errorf("the old key alone opened a value sealed with the new one: %v", err)
	}
}

// FuzzSealerOpen: Open never panics, and accepts nothing but a value Seal produced: the
// fuzzer cannot make a value of its own open, nor alter an authentic one so that it does.
func FuzzSealerOpen(f *testing.F) {
	// Deterministic nonces: the fuzzing workers are other processes, and must seal the very
	// values the seeds hold.
	s := testSealer(f, testKey(1), testKey(2))
	s.random = rand.NewChaCha8([32]byte{1})
	company := stCompany(1)
	authentic := map[string]string{} // sealed -> plaintext
	for i, p := range []string{"", "k", "refresh-token", strings.Repeat("z", 300)} {
		sealed, err := s.Seal(company, FieldAPIKey, []byte(p))
		if err != nil {
			f.Fatal(err)
		}
		authentic[sealed] = p
		f.Add(sealed, uint(i), byte(1))
	}
	olderSealer := testSealer(f, testKey(2))
	olderSealer.random = rand.NewChaCha8([32]byte{2})
	older, _ := olderSealer.Seal(company, FieldAPIKey, []byte("older"))
	authentic[older] = "older"
	f.Add(older, uint(3), byte(0x80))
	f.Add("", uint(0), byte(0))
	f.Add("v1.", uint(0), byte(0))
	f.Add("v1.0123456789abcdef.", uint(5), byte(0))
	f.Add("v1.0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", uint(0), byte(0))
	f.Add("v2."+KeyID(testKey(1))+".AAAA", uint(0), byte(0))
	f.Add("v1."+KeyID(testKey(1))+".\n\n", uint(0), byte(0))
	sealedList := make([]string, 0, len(authentic))
	for v := range authentic {
		sealedList = append(sealedList, v)
	}
	slices.Sort(sealedList) // a stable mapping from pos to value

	f.Fuzz(func(t *testing.T, v string, pos uint, mask byte) {
		got, err := s.Open(company, FieldAPIKey, v)
		if err == nil {
			want, ok := authentic[v]
			if !ok {
				t.Fatalf("Open accepted %q, which Seal never produced", v)
			}
			if string(got) != want {
				t.Fatalf("Open(%q) = %q, want %q", v, got, want)
			}
		}
		// One changed byte of an authentic value never opens.
		if mask == 0 {
			return
		}
		orig := sealedList[pos%uint(len(sealedList))]
		b := []byte(orig)
		b[int(pos/uint(len(sealedList))%uint(len(b)))] ^= mask
		if got, err := s.Open(company, FieldAPIKey, string(b)); err == nil {
			t.Fatalf("Open accepted %q, altered from %q (-> %q)", b, orig, got)
		}
	})
}
