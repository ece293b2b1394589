package credentials

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
)

// The envelope that encrypts a secret at rest (PLEO_PROXY_ENCRYPTION_KEY), shared by every
// store that persists secrets. A sealed value is one line of text:
//
//	v1.<key id>.<base64url without padding of nonce (12 bytes) | AES-256-GCM ciphertext and tag>
//
// The key id is the first 8 bytes of the SHA-256 of the raw 32-byte key, as 16 lower-case hex
// digits (so an operator can tell which key a value needs: `base64 -d <key.b64 | sha256sum |
// cut -c1-16`). The nonce is random for every Seal. The GCM additional data binds the format
// version, the key id, the (canonical) company id and the field name, so a sealed value copied
// onto another company, or into another field of the same company, does not open.
const (
	// SealedPrefix starts every sealed value of the current format.
	SealedPrefix = "v1."
	// KeyIDLength is the length of a key id in hex digits.
	KeyIDLength = 16
	// SealKeySize is the size in bytes of one key (AES-256).
	SealKeySize = 32
)

// The secret fields of a credential, as named in the credentials document; stores pass them
// to Seal and Open so that a value sealed for one field does not open as another.
const (
	FieldAccessToken  = "access_token"
	FieldRefreshToken = "refresh_token"
	FieldAPIKey       = "api_key"
)

// Errors of Sealer.Open, for errors.Is. None of their messages holds a secret.
var (
	// ErrSealedFormat: the value is not a sealed value of a format this build reads.
	ErrSealedFormat = errors.New("credentials: not a sealed value (want v1.<key id>.<data>)")
	// ErrSealedUnknownKey: the value was sealed with a key that is not configured.
	ErrSealedUnknownKey = errors.New("credentials: sealed with a key that is not configured")
	// ErrSealedAuthentication: the value does not authenticate under its key: it was altered,
	// or moved from another company or field.
	ErrSealedAuthentication = errors.New("credentials: sealed value fails authentication (altered, or moved from another company or field)")
)

const (
	nonceSize = 12
	tagSize   = 16
	aadLabel  = "pleo-auth-proxy sealed secret v1"
	// maxSealedLength bounds what Open decodes (secrets are header values, far smaller).
	maxSealedLength = 1 << 20
)

// Sealer encrypts and decrypts secrets with AES-256-GCM. Its first key seals; every key
// opens, so keys can be rotated: configure NEW,OLD, rewrite everything (credentials
// rotate-key), then drop OLD. A Sealer is safe for concurrent use.
//
// SetKeys replaces the keys while the Sealer is in use (a reloaded
// PLEO_PROXY_ENCRYPTION_KEY_FILE): every Seal and Open uses one set of keys throughout.
type Sealer struct {
	keys  atomic.Pointer[sealerKeys]
	setMu sync.Mutex // serialises SetKeys
	// random supplies nonces; nil means crypto/rand (tests set a deterministic source).
	random io.Reader
}

// sealerKeys is one set of keys, newest first, and its generation (0 for NewSealer's, one
// more for every SetKeys).
type sealerKeys struct {
	list []sealerKey
	gen  uint64
}

type sealerKey struct {
	id   string
	aead cipher.AEAD
}

// KeyID returns the id of a key: the first 8 bytes of its SHA-256, as hex.
func KeyID(key []byte) string {
	sum := sha256.Sum256(key)
	return hex.EncodeToString(sum[:KeyIDLength/2])
}

// NewSealer returns a Sealer for keys, newest first; each is 32 bytes. It fails without a key,
// on a key of another size, and on a key given twice.
func NewSealer(keys [][]byte) (*Sealer, error) {
	ks, err := newSealerKeys(keys)
	if err != nil {
		return nil, err
	}
	s := &Sealer{}
	s.keys.Store(ks)
	return s, nil
}

// SetKeys replaces the Sealer's keys with keys, newest first, checked as NewSealer checks
// them; on an error the keys in use stay. Values sealed with a key no longer listed no longer
// open.
func (s *Sealer) SetKeys(keys [][]byte) error {
	ks, err := newSealerKeys(keys)
	if err != nil {
		return err
	}
	s.setMu.Lock()
	defer s.setMu.Unlock()
	ks.gen = s.keys.Load().gen + 1
	s.keys.Store(ks)
	return nil
}

// Generation counts the SetKeys calls that changed the keys: a store that failed to decrypt
// a file retries when it changes.
func (s *Sealer) Generation() uint64 { return s.keys.Load().gen }

func newSealerKeys(keys [][]byte) (*sealerKeys, error) {
	if len(keys) == 0 {
		return nil, errors.New("credentials: sealer: no encryption key")
	}
	s := &sealerKeys{list: make([]sealerKey, 0, len(keys))}
	seen := make(map[string]int, len(keys))
	for i, k := range keys {
		if len(k) != SealKeySize {
			return nil, fmt.Errorf("credentials: sealer: key %d of %d is %d bytes, want %d", i+1, len(keys), len(k), SealKeySize)
		}
		id := KeyID(k)
		if j, dup := seen[id]; dup {
			return nil, fmt.Errorf("credentials: sealer: key %d of %d repeats key %d (id %s)", i+1, len(keys), j+1, id)
		}
		seen[id] = i
		block, err := aes.NewCipher(k)
		if err != nil {
			return nil, fmt.Errorf("credentials: sealer: %w", err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("credentials: sealer: %w", err)
		}
		s.list = append(s.list, sealerKey{id: id, aead: aead})
	}
	return s, nil
}

// KeyID returns the id of the key Seal uses (the first).
func (s *Sealer) KeyID() string { return s.keys.Load().list[0].id }

// KeyIDs returns the ids of every key, newest first.
func (s *Sealer) KeyIDs() []string {
	keys := s.keys.Load().list
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = k.id
	}
	return ids
}

// Seal encrypts plaintext, the value of field (FieldAccessToken, FieldRefreshToken,
// FieldAPIKey, or a store's own name) of company companyID, with the newest key and a fresh
// random nonce.
func (s *Sealer) Seal(companyID, field string, plaintext []byte) (string, error) {
	if field == "" {
		return "", errors.New("credentials: seal: empty field name")
	}
	k := s.keys.Load().list[0]
	buf := make([]byte, nonceSize, nonceSize+len(plaintext)+tagSize)
	random := s.random
	if random == nil {
		random = rand.Reader
	}
	if _, err := io.ReadFull(random, buf); err != nil {
		return "", fmt.Errorf("credentials: seal: %w", err)
	}
	buf = k.aead.Seal(buf, buf[:nonceSize], plaintext, additionalData(k.id, companyID, field))
	return SealedPrefix + k.id + "." + base64.RawURLEncoding.EncodeToString(buf), nil
}

// Open decrypts a value Seal returned for the same company and field, with whichever
// configured key sealed it. It returns an error wrapping ErrSealedFormat, ErrSealedUnknownKey
// or ErrSealedAuthentication otherwise; any change to a sealed value is detected.
func (s *Sealer) Open(companyID, field, sealed string) ([]byte, error) {
	id, data, err := splitSealed(sealed)
	if err != nil {
		return nil, err
	}
	keys := s.keys.Load().list
	for _, k := range keys {
		if k.id != id {
			continue
		}
		plain, err := k.aead.Open(nil, data[:nonceSize], data[nonceSize:], additionalData(id, companyID, field))
		if err != nil {
			return nil, fmt.Errorf("%w (key %s)", ErrSealedAuthentication, id)
		}
		return plain, nil
	}
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = k.id
	}
	return nil, fmt.Errorf("%w: the value needs key %s, configured: %s", ErrSealedUnknownKey, id, strings.Join(ids, ", "))
}

// SealedKeyID returns the id of the key a sealed value needs, or an error wrapping
// ErrSealedFormat.
func SealedKeyID(sealed string) (string, error) {
	id, _, err := splitSealed(sealed)
	return id, err
}

// IsSealed reports whether v has the form of a sealed value (it may still fail to open).
func IsSealed(v string) bool {
	_, _, err := splitSealed(v)
	return err == nil
}

// splitSealed parses "v1.<key id>.<data>" strictly: exactly one textual form per value, so
// that a value that opens is exactly what Seal produced.
func splitSealed(sealed string) (keyID string, data []byte, err error) {
	if len(sealed) > maxSealedLength {
		return "", nil, fmt.Errorf("%w: longer than %d bytes", ErrSealedFormat, maxSealedLength)
	}
	rest, ok := strings.CutPrefix(sealed, SealedPrefix)
	if !ok {
		return "", nil, ErrSealedFormat
	}
	keyID, enc, ok := strings.Cut(rest, ".")
	if !ok || !isKeyID(keyID) {
		return "", nil, fmt.Errorf("%w: bad key id", ErrSealedFormat)
	}
	for i := 0; i < len(enc); i++ {
		c := enc[i]
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return "", nil, fmt.Errorf("%w: data is not unpadded base64url", ErrSealedFormat)
		}
	}
	data, err = base64.RawURLEncoding.Strict().DecodeString(enc)
	if err != nil {
		return "", nil, fmt.Errorf("%w: data is not unpadded base64url", ErrSealedFormat)
	}
	if len(data) < nonceSize+tagSize {
		return "", nil, fmt.Errorf("%w: data too short", ErrSealedFormat)
	}
	return keyID, data, nil
}

func isKeyID(s string) bool {
	if len(s) != KeyIDLength {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// additionalData binds a sealed value to its format, key, company and field, each
// length-prefixed so that no two different tuples give the same bytes.
func additionalData(keyID, companyID, field string) []byte {
	companyID = CanonicalCompanyID(companyID)
	b := make([]byte, 0, len(aadLabel)+len(keyID)+len(companyID)+len(field)+16)
	for _, part := range []string{aadLabel, keyID, companyID, field} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(part)))
		b = append(b, part...)
	}
	return b
}

// KeyRotator is implemented by stores that encrypt secrets at rest. RotateKey rewrites every
// stored secret with the newest key of the store's Sealer and returns how many credentials
// it rewrote; it fails when the store has no Sealer. `credentials rotate-key` calls it.
type KeyRotator interface {
	RotateKey(ctx context.Context) (int, error)
}
