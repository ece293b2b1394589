package connect

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"
)

// A connect link is GET /connect?tenant_id=T&expires=E&nonce=N&sig=S: the integration asks
// the sidecar for one (connect-link, POST /connect-links) for the tenant its logged-in user
// owns, and only such links start a consent flow.
//
//   - E is the expiry in Unix seconds (decimal, no sign, no leading zero);
//   - N is 16 random bytes, base64url without padding: every link differs;
//   - S is HMAC-SHA256 under a link key over the canonical encoding of (T, E, N), base64url
//     without padding.
//
// The canonical encoding is the context string linkMACContext followed by each value as a
// 4-byte big-endian length and its bytes, in the order tenant, expires, nonce: no value can
// run into the next, so no two parameter lists share a MAC. Verification demands exactly
// those four parameters, each once: a parameter added, removed, repeated or altered fails.
const (
	// LinkTenantParam, LinkExpiresParam, LinkNonceParam and LinkSigParam are the query
	// parameters of a connect link.
	LinkTenantParam  = "tenant_id"
	LinkExpiresParam = "expires"
	LinkNonceParam   = "nonce"
	LinkSigParam     = "sig"

	// DefaultLinkTTL is a link's lifetime when none is asked for.
	DefaultLinkTTL = time.Hour
	// MaxLinkTTL is the longest lifetime a link may be given.
	MaxLinkTTL = 7 * 24 * time.Hour

	// MinLinkKeySize is the least length in bytes of a link key.
	MinLinkKeySize = 32

	// linkKeyInfo is the HKDF info that derives a link key from an encryption key, so the
	// same PLEO_PROXY_ENCRYPTION_KEY never serves as both an AES and an HMAC key.
	linkKeyInfo = "pleo-auth-proxy connect link v1"
	// linkMACContext starts every MAC input (domain separation, and a version).
	linkMACContext = "pleo-auth-proxy/connect-link/v1\x00"
	// linkNonceSize is the nonce's length in bytes.
	linkNonceSize = 16
)

// Reasons a link is refused. The /connect page says which; all answer 403.
var (
	// ErrLinkUnsigned is a link without a signature (or with none of the signed parameters).
	ErrLinkUnsigned = errors.New("connect: link is not signed")
	// ErrLinkInvalid is a link whose parameters are malformed, repeated, added or missing, or
	// whose signature does not verify under any link key (altered, or signed under another key).
	ErrLinkInvalid = errors.New("connect: link signature is not valid")
	// ErrLinkExpired is a validly signed link past its expiry.
	ErrLinkExpired = errors.New("connect: link has expired")
)

// DeriveLinkKey derives a link key from an encryption key (PLEO_PROXY_ENCRYPTION_KEY) with
// HKDF-SHA-256 and a fixed info string, so that every replica sharing the encryption key
// signs and verifies the same links without another secret to distribute.
func DeriveLinkKey(encryptionKey []byte) ([]byte, error) {
	k, err := hkdf.Key(sha256.New, encryptionKey, nil, linkKeyInfo, 32)
	if err != nil {
		return nil, fmt.Errorf("connect: link key: %w", err)
	}
	return k, nil
}

// Links signs and verifies connect links. The first key signs; any verifies, so a key can be
// rotated by putting the new one first and dropping the old once its links have expired.
type Links struct {
	keys atomic.Pointer[[][]byte]
	now  func() time.Time
}

// NewLinks builds a signer over keys (each at least MinLinkKeySize bytes); now is the clock
// (nil: time.Now).
func NewLinks(keys [][]byte, now func() time.Time) (*Links, error) {
	l := &Links{now: now}
	if l.now == nil {
		l.now = time.Now
	}
	if err := l.SetKeys(keys); err != nil {
		return nil, err
	}
	return l, nil
}

// SetKeys replaces the keys (a rotated PLEO_PROXY_CONNECT_KEY_FILE), each at least
// MinLinkKeySize bytes: the first signs from now on, any verifies. On an error the keys in use
// stay.
func (l *Links) SetKeys(keys [][]byte) error {
	if len(keys) == 0 {
		return errors.New("connect: a link key is required")
	}
	own := make([][]byte, 0, len(keys))
	for i, k := range keys {
		if len(k) < MinLinkKeySize {
			return fmt.Errorf("connect: link key %d is %d bytes, want at least %d", i+1, len(k), MinLinkKeySize)
		}
		own = append(own, append([]byte(nil), k...))
	}
	l.keys.Store(&own)
	return nil
}

// RandomLinks is a signer under a fresh random key: links it signs are valid in this process
// only (serve --dev).
func RandomLinks(now func() time.Time) (*Links, error) {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("connect: link key: %w", err)
	}
	return NewLinks([][]byte{k}, now)
}

// CheckLinkTTL returns an error saying why ttl is not a link lifetime (it must be positive and
// at most MaxLinkTTL), or nil.
func CheckLinkTTL(ttl time.Duration) error {
	switch {
	case ttl <= 0:
		return fmt.Errorf("the lifetime %s is not positive", ttl)
	case ttl > MaxLinkTTL:
		return fmt.Errorf("the lifetime %s is longer than the most a link may live, %s", ttl, MaxLinkTTL)
	}
	return nil
}

// CheckTenant returns an error saying why t is not a tenant id a link may carry, or nil.
func CheckTenant(t string) error {
	if msg := checkTenant(t); msg != "" {
		return errors.New(msg)
	}
	return nil
}

// Sign returns the query of a link for tenant valid for ttl (see CheckLinkTTL) and its
// expiry (to the second).
func (l *Links) Sign(tenant string, ttl time.Duration) (url.Values, time.Time, error) {
	if err := CheckTenant(tenant); err != nil {
		return nil, time.Time{}, fmt.Errorf("connect: %w", err)
	}
	if err := CheckLinkTTL(ttl); err != nil {
		return nil, time.Time{}, fmt.Errorf("connect: %w", err)
	}
	expires := l.now().Add(ttl).Truncate(time.Second).UTC()
	var n [linkNonceSize]byte
	if _, err := rand.Read(n[:]); err != nil {
		return nil, time.Time{}, fmt.Errorf("connect: nonce: %w", err)
	}
	exp := strconv.FormatInt(expires.Unix(), 10)
	nonce := base64.RawURLEncoding.EncodeToString(n[:])
	sig := linkMAC((*l.keys.Load())[0], tenant, exp, nonce)
	return url.Values{
		LinkTenantParam:  {tenant},
		LinkExpiresParam: {exp},
		LinkNonceParam:   {nonce},
		LinkSigParam:     {base64.RawURLEncoding.EncodeToString(sig)},
	}, expires, nil
}

// URL returns the link for tenant on the connect listener at base (its scheme and host; the
// path becomes /connect) and its expiry.
func (l *Links) URL(base *url.URL, tenant string, ttl time.Duration) (string, time.Time, error) {
	q, expires, err := l.Sign(tenant, ttl)
	if err != nil {
		return "", time.Time{}, err
	}
	u := url.URL{Scheme: base.Scheme, Host: base.Host, Path: ConnectPath, RawQuery: q.Encode()}
	return u.String(), expires, nil
}

// maxLinkQuery bounds the query Verify parses: a link signed here is far shorter.
const maxLinkQuery = 2048

// Verify checks the raw query of a /connect request and returns the tenant it was signed
// for: ErrLinkUnsigned, ErrLinkInvalid or ErrLinkExpired otherwise. The signature is
// compared in constant time (hmac.Equal) under every key.
func (l *Links) Verify(rawQuery string) (string, error) {
	if len(rawQuery) > maxLinkQuery {
		return "", ErrLinkInvalid
	}
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return "", ErrLinkInvalid
	}
	if len(q[LinkSigParam]) == 0 {
		return "", ErrLinkUnsigned
	}
	if len(q) != 4 {
		return "", ErrLinkInvalid // a parameter added or missing
	}
	for _, p := range []string{LinkTenantParam, LinkExpiresParam, LinkNonceParam, LinkSigParam} {
		if len(q[p]) != 1 {
			return "", ErrLinkInvalid
		}
	}
	tenant, exp, nonce := q.Get(LinkTenantParam), q.Get(LinkExpiresParam), q.Get(LinkNonceParam)
	sig, err := base64.RawURLEncoding.DecodeString(q.Get(LinkSigParam))
	if err != nil || len(sig) != sha256.Size {
		return "", ErrLinkInvalid
	}
	ok := false
	for _, k := range *l.keys.Load() {
		// Every key is tried, so the time taken does not say which one matched.
		if hmac.Equal(sig, linkMAC(k, tenant, exp, nonce)) {
			ok = true
		}
	}
	if !ok {
		return "", ErrLinkInvalid
	}
	// Signed here, so well-formed; checked anyway, as a key may be shared with an older build.
	unix, err := strconv.ParseInt(exp, 10, 64)
	if err != nil || checkTenant(tenant) != "" {
		return "", ErrLinkInvalid
	}
	now := l.now()
	expires := time.Unix(unix, 0)
	if !now.Before(expires) {
		return tenant, ErrLinkExpired
	}
	if expires.After(now.Add(MaxLinkTTL + maxClockSkew)) {
		return "", ErrLinkInvalid // no signer here makes such a link
	}
	return tenant, nil
}

// linkMAC is HMAC-SHA256 under key over the canonical encoding of a link's values.
func linkMAC(key []byte, tenant, expires, nonce string) []byte {
	m := hmac.New(sha256.New, key)
	buf := make([]byte, 0, len(linkMACContext)+12+len(tenant)+len(expires)+len(nonce))
	buf = append(buf, linkMACContext...)
	for _, v := range []string{tenant, expires, nonce} {
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(v)))
		buf = append(buf, v...)
	}
	m.Write(buf)
	return m.Sum(nil)
}
