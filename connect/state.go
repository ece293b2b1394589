package connect

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"
)

// StateTTL is how long a consent flow may take, from GET /connect to the callback.
const StateTTL = 10 * time.Minute

// stateKeyInfo is the HKDF info that derives the state key from an encryption key, so the
// same PLEO_PROXY_ENCRYPTION_KEY never seals two kinds of data with one AES key.
const stateKeyInfo = "pleo-auth-proxy connect state v1"

// stateVersion is the first byte of every sealed state's plaintext.
const stateVersion = 1

// maxClockSkew is how far in the future a state's issue time may lie (another replica's
// clock) before the state is refused.
const maxClockSkew = time.Minute

// Reasons a state is refused. They are what the callback page explains.
var (
	// ErrStateInvalid is a state that is missing, malformed, forged, or sealed under a key
	// this process does not hold.
	ErrStateInvalid = errors.New("connect: state is not valid")
	// ErrStateExpired is a state issued more than StateTTL ago.
	ErrStateExpired = errors.New("connect: state has expired")
	// ErrStateUsed is a state whose callback already ran (in this process).
	ErrStateUsed = errors.New("connect: state was already used")
	// ErrStateBrowser is a state presented by a browser other than the one that started the
	// flow (its binding cookie is missing or different).
	ErrStateBrowser = errors.New("connect: state belongs to another browser")
	// ErrBusy is a callback refused because too many states are being tracked as used.
	ErrBusy = errors.New("connect: too many consent flows in progress")
)

// flowState is what a sealed state carries: everything the callback needs, so nothing is
// kept server-side between /connect and the callback but the used-state set.
type flowState struct {
	ID       [16]byte  // unique per flow: the single-use key
	Browser  [16]byte  // the binding cookie's value
	IssuedAt time.Time // second precision
	Verifier string    // the PKCE code verifier
	Tenant   string    // the tenant to connect
}

// sealer seals and opens states with AES-256-GCM. The first key seals; any opens (so a key
// rotation does not break flows in progress). The additional data binds the client and the
// redirect URI, so a state minted by another deployment sharing the key does not open.
type sealer struct {
	aeads []cipher.AEAD
	ad    []byte
}

// newSealer derives one AES key per encryption key with HKDF-SHA-256; with no key it makes a
// random one, valid for this process only.
func newSealer(keys [][]byte, ad string) (*sealer, error) {
	if len(keys) == 0 {
		k := make([]byte, 32)
		if _, err := rand.Read(k); err != nil {
			return nil, fmt.Errorf("connect: state key: %w", err)
		}
		keys = [][]byte{k}
	}
	s := &sealer{ad: []byte(ad)}
	for _, k := range keys {
		dk, err := hkdf.Key(sha256.New, k, nil, stateKeyInfo, 32)
		if err != nil {
			return nil, fmt.Errorf("connect: state key: %w", err)
		}
		block, err := aes.NewCipher(dk)
		if err != nil {
			return nil, fmt.Errorf("connect: state key: %w", err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("connect: state key: %w", err)
		}
		s.aeads = append(s.aeads, aead)
	}
	return s, nil
}

// seal returns st as URL-safe text: base64url(nonce ‖ AES-GCM(plaintext)).
func (s *sealer) seal(st flowState) (string, error) {
	if len(st.Verifier) > 255 {
		return "", errors.New("connect: verifier too long")
	}
	pt := make([]byte, 0, 1+16+16+8+1+len(st.Verifier)+len(st.Tenant))
	pt = append(pt, stateVersion)
	pt = append(pt, st.ID[:]...)
	pt = append(pt, st.Browser[:]...)
	pt = binary.BigEndian.AppendUint64(pt, uint64(st.IssuedAt.Unix()))
	pt = append(pt, byte(len(st.Verifier)))
	pt = append(pt, st.Verifier...)
	pt = append(pt, st.Tenant...)

	aead := s.aeads[0]
	out := make([]byte, aead.NonceSize(), aead.NonceSize()+len(pt)+aead.Overhead())
	if _, err := rand.Read(out); err != nil {
		return "", fmt.Errorf("connect: nonce: %w", err)
	}
	out = aead.Seal(out, out, pt, s.ad)
	return base64.RawURLEncoding.EncodeToString(out), nil
}

// maxStateLen bounds the text open looks at: a state sealed here is far shorter.
const maxStateLen = 2048

// open authenticates and decodes a sealed state. Any failure is ErrStateInvalid.
func (s *sealer) open(text string) (flowState, error) {
	if text == "" || len(text) > maxStateLen {
		return flowState{}, ErrStateInvalid
	}
	raw, err := base64.RawURLEncoding.DecodeString(text)
	if err != nil {
		return flowState{}, ErrStateInvalid
	}
	for _, aead := range s.aeads {
		n := aead.NonceSize()
		if len(raw) < n+aead.Overhead() {
			return flowState{}, ErrStateInvalid
		}
		pt, err := aead.Open(nil, raw[:n], raw[n:], s.ad)
		if err != nil {
			continue
		}
		return decodeState(pt)
	}
	return flowState{}, ErrStateInvalid
}

func decodeState(pt []byte) (flowState, error) {
	const fixed = 1 + 16 + 16 + 8 + 1
	if len(pt) < fixed || pt[0] != stateVersion {
		return flowState{}, ErrStateInvalid
	}
	var st flowState
	copy(st.ID[:], pt[1:17])
	copy(st.Browser[:], pt[17:33])
	st.IssuedAt = time.Unix(int64(binary.BigEndian.Uint64(pt[33:41])), 0)
	vl := int(pt[41])
	if len(pt) < fixed+vl {
		return flowState{}, ErrStateInvalid
	}
	st.Verifier = string(pt[fixed : fixed+vl])
	st.Tenant = string(pt[fixed+vl:])
	return st, nil
}

// check applies the time and browser rules to an opened state.
func (st flowState) check(now time.Time, browser []byte) error {
	if now.Sub(st.IssuedAt) > StateTTL {
		return ErrStateExpired
	}
	if st.IssuedAt.Sub(now) > maxClockSkew {
		return ErrStateInvalid
	}
	if len(browser) != len(st.Browser) || subtle.ConstantTimeCompare(browser, st.Browser[:]) != 1 {
		return ErrStateBrowser
	}
	return nil
}

// usedStates remembers the ids of states whose callback ran, until they expire anyway, so
// each state completes at most once in this process. It holds at most max ids: a full set
// refuses further callbacks rather than forget an id that could then be replayed.
type usedStates struct {
	mu        sync.Mutex
	ids       map[[16]byte]time.Time // id -> when its state expires
	max       int
	nextPrune int
}

func newUsedStates(max int) *usedStates {
	return &usedStates{ids: make(map[[16]byte]time.Time), max: max, nextPrune: 1024}
}

// use marks id used; it fails with ErrStateUsed if it already was, or ErrBusy when full.
func (u *usedStates) use(id [16]byte, expires, now time.Time) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, used := u.ids[id]; used {
		return ErrStateUsed
	}
	if len(u.ids) >= u.nextPrune || len(u.ids) >= u.max {
		for k, exp := range u.ids {
			if now.After(exp) {
				delete(u.ids, k)
			}
		}
		u.nextPrune = max(1024, 2*len(u.ids))
	}
	if len(u.ids) >= u.max {
		return ErrBusy
	}
	u.ids[id] = expires
	return nil
}

// len is the number of ids held, for tests.
func (u *usedStates) len() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.ids)
}
