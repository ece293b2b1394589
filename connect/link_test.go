package connect

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/testenv"
)

func linkKey(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

func newTestLinks(t *testing.T, clock *testenv.Clock, keys ...[]byte) *Links {
	t.Helper()
	l, err := NewLinks(keys, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestLinkVerify(t *testing.T) {
	clock := testenv.NewClock(time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC))
	signer := newTestLinks(t, clock, linkKey(1))
	q, expires, err := signer.Sign("acme-erp", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if want := clock.Now().Add(time.Hour); !expires.Equal(want) || q.Get(LinkExpiresParam) != strconv.FormatInt(want.Unix(), 10) {
		t.Fatalf("expires %v (%s), want %v", expires, q.Get(LinkExpiresParam), want)
	}
	other, _, _ := signer.Sign("acme-erp", time.Hour)
	if other.Get(LinkNonceParam) == q.Get(LinkNonceParam) || other.Get(LinkSigParam) == q.Get(LinkSigParam) {
		t.Fatal("two links share a nonce or signature")
	}
	edit := func(f func(url.Values)) string {
		c := url.Values{}
		for k, v := range q {
			c[k] = append([]string(nil), v...)
		}
		f(c)
		return c.Encode()
	}
	flip := func(s string) string { // change one character, keep the alphabet
		b := []byte(s)
		if b[0] == 'A' {
			b[0] = 'B'
		} else {
			b[0] = 'A'
		}
		return string(b)
	}
	later := strconv.FormatInt(expires.Unix()+3600, 10)
	tests := []struct {
		name    string
		verify  *Links
		query   string
		advance time.Duration
		want    error
	}{
		{"as signed", signer, q.Encode(), 0, nil},
		{"parameters reordered", signer, "sig=" + url.QueryEscape(q.Get("sig")) + "&nonce=" + q.Get("nonce") +
			"&expires=" + q.Get("expires") + "&tenant_id=acme-erp", 0, nil},
		{"same key, another signer (replica)", newTestLinks(t, clock, linkKey(1)), q.Encode(), 0, nil},
		{"rotated: old key second", newTestLinks(t, clock, linkKey(2), linkKey(1)), q.Encode(), 0, nil},
		{"just before expiry", signer, q.Encode(), time.Hour - time.Second, nil},
		{"at expiry", signer, q.Encode(), time.Hour, ErrLinkExpired},
		{"long expired", signer, q.Encode(), 48 * time.Hour, ErrLinkExpired},
		{"another key", newTestLinks(t, clock, linkKey(2)), q.Encode(), 0, ErrLinkInvalid},
		{"unsigned: tenant only", signer, "tenant_id=acme-erp", 0, ErrLinkUnsigned},
		{"empty query", signer, "", 0, ErrLinkUnsigned},
		{"signature removed", signer, edit(func(v url.Values) { v.Del(LinkSigParam) }), 0, ErrLinkUnsigned},
		{"tenant altered", signer, edit(func(v url.Values) { v.Set(LinkTenantParam, "attacker") }), 0, ErrLinkInvalid},
		{"tenant case altered", signer, edit(func(v url.Values) { v.Set(LinkTenantParam, "ACME-erp") }), 0, ErrLinkInvalid},
		{"tenant extended", signer, edit(func(v url.Values) { v.Set(LinkTenantParam, "acme-erp2") }), 0, ErrLinkInvalid},
		{"expires altered", signer, edit(func(v url.Values) { v.Set(LinkExpiresParam, later) }), 0, ErrLinkInvalid},
		{"expires with a leading zero", signer, edit(func(v url.Values) { v.Set(LinkExpiresParam, "0"+q.Get(LinkExpiresParam)) }), 0, ErrLinkInvalid},
		{"nonce altered", signer, edit(func(v url.Values) { v.Set(LinkNonceParam, flip(q.Get(LinkNonceParam))) }), 0, ErrLinkInvalid},
		{"signature altered", signer, edit(func(v url.Values) { v.Set(LinkSigParam, flip(q.Get(LinkSigParam))) }), 0, ErrLinkInvalid},
		{"signature truncated", signer, edit(func(v url.Values) { v.Set(LinkSigParam, q.Get(LinkSigParam)[:20]) }), 0, ErrLinkInvalid},
		{"signature not base64url", signer, edit(func(v url.Values) { v.Set(LinkSigParam, "!!"+q.Get(LinkSigParam)[2:]) }), 0, ErrLinkInvalid},
		{"nonce removed", signer, edit(func(v url.Values) { v.Del(LinkNonceParam) }), 0, ErrLinkInvalid},
		{"expires removed", signer, edit(func(v url.Values) { v.Del(LinkExpiresParam) }), 0, ErrLinkInvalid},
		{"tenant removed", signer, edit(func(v url.Values) { v.Del(LinkTenantParam) }), 0, ErrLinkInvalid},
		{"parameter added", signer, edit(func(v url.Values) { v.Set("success_url", "https://evil.example") }), 0, ErrLinkInvalid},
		{"tenant repeated", signer, edit(func(v url.Values) { v.Add(LinkTenantParam, "attacker") }), 0, ErrLinkInvalid},
		{"signature repeated", signer, edit(func(v url.Values) { v.Add(LinkSigParam, q.Get(LinkSigParam)) }), 0, ErrLinkInvalid},
		{"malformed query", signer, q.Encode() + "&%zz", 0, ErrLinkInvalid},
		{"oversized query", signer, q.Encode() + "&x=" + strings.Repeat("a", maxLinkQuery), 0, ErrLinkInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := testenv.NewClock(clock.Now().Add(tt.advance))
			v := &Links{now: c.Now}
			v.keys.Store(tt.verify.keys.Load())
			tenant, err := v.Verify(tt.query)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("Verify: %v, want %v", err, tt.want)
			}
			if err == nil && tenant != "acme-erp" {
				t.Fatalf("tenant %q", tenant)
			}
		})
	}
}

// A link whose values are moved between fields keeps no signature: the encoding is
// length-prefixed, so "ab"+"c" and "a"+"bc" differ.
func TestLinkMACIsUnambiguous(t *testing.T) {
	k := linkKey(3)
	if bytes.Equal(linkMAC(k, "ab", "1", "c"), linkMAC(k, "a", "b1", "c")) ||
		bytes.Equal(linkMAC(k, "a", "1", "bc"), linkMAC(k, "a", "1b", "c")) {
		t.Fatal("two parameter lists share a MAC")
	}
}

// A link signed by a key holder with an expiry far beyond MaxLinkTTL is refused.
func TestLinkFarFutureExpiryRefused(t *testing.T) {
	clock := testenv.NewClock(time.Now())
	l := newTestLinks(t, clock, linkKey(1))
	exp := strconv.FormatInt(clock.Now().Add(MaxLinkTTL+time.Hour).Unix(), 10)
	sig := base64.RawURLEncoding.EncodeToString(linkMAC(linkKey(1), "t", exp, "n"))
	q := url.Values{LinkTenantParam: {"t"}, LinkExpiresParam: {exp}, LinkNonceParam: {"n"}, LinkSigParam: {sig}}
	if _, err := l.Verify(q.Encode()); !errors.Is(err, ErrLinkInvalid) {
		t.Fatalf("Verify: %v", err)
	}
}

func TestLinkSignRefuses(t *testing.T) {
	l := newTestLinks(t, testenv.NewClock(time.Now()), linkKey(1))
	for _, tt := range []struct {
		tenant string
		ttl    time.Duration
	}{
		{"", time.Hour},
		{"a\x00b", time.Hour},
		{"a\nb", time.Hour},
		{strings.Repeat("t", maxTenantLen+1), time.Hour},
		{"\xff", time.Hour},
		{"ok", 0},
		{"ok", -time.Minute},
		{"ok", MaxLinkTTL + time.Second},
	} {
		if _, _, err := l.Sign(tt.tenant, tt.ttl); err == nil {
			t.Errorf("Sign(%q, %s) succeeded", tt.tenant, tt.ttl)
		}
	}
	if _, _, err := l.Sign("ok", MaxLinkTTL); err != nil {
		t.Errorf("Sign at MaxLinkTTL: %v", err)
	}
}

func TestNewLinksRefusesShortKeys(t *testing.T) {
	if _, err := NewLinks(nil, nil); err == nil {
		t.Error("no key accepted")
	}
	if _, err := NewLinks([][]byte{linkKey(1), make([]byte, 31)}, nil); err == nil {
		t.Error("a 31-byte key accepted")
	}
}

func TestDeriveLinkKey(t *testing.T) {
	a, err := DeriveLinkKey(linkKey(9))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := DeriveLinkKey(linkKey(9))
	c, _ := DeriveLinkKey(linkKey(8))
	if len(a) != 32 || !bytes.Equal(a, b) || bytes.Equal(a, c) || bytes.Equal(a, linkKey(9)) {
		t.Fatal("derivation is not a deterministic function distinct from its input")
	}
	// Not the state key derived from the same encryption key.
	st, _ := hkdf.Key(sha256.New, linkKey(9), nil, stateKeyInfo, 32)
	if bytes.Equal(a, st) {
		t.Fatal("the link key is the state key")
	}
}

func TestLinkURL(t *testing.T) {
	clock := testenv.NewClock(time.Now())
	l := newTestLinks(t, clock, linkKey(1))
	base, _ := url.Parse("https://connect.example.com/oauth/callback?x=1")
	raw, _, err := l.URL(base, "t 1/é", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(raw)
	if u.Scheme != "https" || u.Host != "connect.example.com" || u.Path != ConnectPath {
		t.Fatalf("link %s", raw)
	}
	if tenant, err := l.Verify(u.RawQuery); err != nil || tenant != "t 1/é" {
		t.Fatalf("Verify(%s): %q, %v", raw, tenant, err)
	}
}

// BenchmarkLinkVerify is the cost /connect pays per request before anything else: parsing
// the query and one HMAC per key.
func BenchmarkLinkVerify(b *testing.B) {
	l, err := NewLinks([][]byte{linkKey(1), linkKey(2)}, nil)
	if err != nil {
		b.Fatal(err)
	}
	q, _, err := l.Sign("erp-tenant-42", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	raw := q.Encode()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := l.Verify(raw); err != nil {
			b.Fatal(err)
		}
	}
}

// TestLinksSetKeys: a rotated key file takes effect at once: the new first key signs, every
// listed key verifies, a dropped key no longer does, and bad keys change nothing.
func TestLinksSetKeys(t *testing.T) {
	a, b := bytes.Repeat([]byte{'a'}, 32), bytes.Repeat([]byte{'b'}, 32)
	l, err := NewLinks([][]byte{a}, nil)
	if err != nil {
		t.Fatal(err)
	}
	onlyA, _, err := l.Sign("erp-1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	verifies := func(q url.Values) bool {
		_, err := l.Verify(q.Encode())
		return err == nil
	}
	if err := l.SetKeys([][]byte{b, a}); err != nil {
		t.Fatal(err)
	}
	underB, _, _ := l.Sign("erp-1", time.Hour)
	if !verifies(onlyA) || !verifies(underB) {
		t.Fatal("after adding a key, a link under the old or the new key does not verify")
	}
	if err := l.SetKeys([][]byte{[]byte("short")}); err == nil {
		t.Fatal("a short key was accepted")
	}
	if err := l.SetKeys(nil); err == nil {
		t.Fatal("no key was accepted")
	}
	if err := l.SetKeys([][]byte{b}); err != nil {
		t.Fatal(err)
	}
	if verifies(onlyA) || !verifies(underB) {
		t.Fatal("after dropping the old key, its link still verifies or the new one does not")
	}
}
