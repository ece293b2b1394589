package credentials

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// The file store keeps each credential as one packed string rather than a Credential (a
// 184-byte struct of ten strings and two times): 100,000 credentials with 43-character tokens
// take about 16 MB instead of about 45 MB, in 100,000 objects instead of a million. A Get
// unpacks one; the strings of the Credential it returns are substrings of the packed record,
// so unpacking allocates nothing.
//
// A packed record is, in order:
//
//	company id       36 bytes, canonical (lower case)
//	type, state      1 byte each (packedTypes, packedStates)
//	version          varint
//	expires_at       time: 0, or 1 then varint Unix seconds and uvarint nanoseconds (UTC)
//	last_refreshed_at time, as expires_at
//	tenant_id, access_token, refresh_token, api_key, last_error
//	                 each a uvarint length and the bytes
//
// Every value is stored as is, so unpack(pack(c)) == c for every normalised credential, and
// two packed records are equal exactly when sameCredential says their credentials are.

// packedIDLen is the length of a canonical company id, the first bytes of a packed record.
const packedIDLen = 36

// packedTypes and packedStates give the one-byte codes of types and states (their index).
var (
	packedTypes  = [...]Type{0: "", 1: OAuth2, 2: IntegratedAPIKey, 3: StandaloneAPIKey}
	packedStates = [...]State{0: "", 1: StateActive, 2: StateReauthorizationRequired}
)

// appendPacked appends c, which must be normalised (normalizeCredential) and valid, packed.
func appendPacked(b []byte, c Credential) ([]byte, error) {
	if len(c.CompanyID) != packedIDLen || CanonicalCompanyID(c.CompanyID) != c.CompanyID {
		return nil, fmt.Errorf("credentials: pack: company id %q is not canonical", c.CompanyID)
	}
	t := slices.Index(packedTypes[:], c.Type)
	st := slices.Index(packedStates[:], c.State)
	if t <= 0 || st <= 0 {
		return nil, fmt.Errorf("credentials: pack: company %s: unknown type %q or state %q", c.CompanyID, c.Type, c.State)
	}
	b = append(b, c.CompanyID...)
	b = append(b, byte(t), byte(st))
	b = binary.AppendVarint(b, c.Version)
	b = appendPackedTime(b, c.ExpiresAt)
	b = appendPackedTime(b, c.LastRefreshedAt)
	for _, s := range [...]string{c.TenantID, c.AccessToken.Reveal(), c.RefreshToken.Reveal(), c.APIKey.Reveal(), c.LastError} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return b, nil
}

func appendPackedTime(b []byte, t time.Time) []byte {
	if t.IsZero() {
		return append(b, 0)
	}
	b = append(b, 1)
	b = binary.AppendVarint(b, t.Unix())
	return binary.AppendUvarint(b, uint64(t.Nanosecond()))
}

// pack returns c, normalised and valid, as a packed record.
func pack(c Credential) (string, error) {
	b, err := appendPacked(make([]byte, 0, packedSize(c)), c)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// packedSize is an upper bound of c's packed length.
func packedSize(c Credential) int {
	return packedIDLen + 2 + 3*binary.MaxVarintLen64 + 2*binary.MaxVarintLen32 + 5*binary.MaxVarintLen32 +
		len(c.TenantID) + len(c.AccessToken) + len(c.RefreshToken) + len(c.APIKey) + len(c.LastError)
}

// errPackedCorrupt is a packed record that does not decode: a bug, never a property of a file.
var errPackedCorrupt = errors.New("credentials: corrupt packed record")

// packedReader decodes a packed record field by field.
type packedReader struct {
	p   string
	off int
	err error
}

func (r *packedReader) byte() byte {
	if r.err != nil || r.off >= len(r.p) {
		r.err = errPackedCorrupt
		return 0
	}
	r.off++
	return r.p[r.off-1]
}

func (r *packedReader) uvarint() uint64 {
	var x uint64
	for shift := uint(0); shift < 64; shift += 7 {
		c := r.byte()
		if r.err != nil {
			return 0
		}
		x |= uint64(c&0x7f) << shift
		if c < 0x80 {
			return x
		}
	}
	r.err = errPackedCorrupt
	return 0
}

func (r *packedReader) varint() int64 {
	u := r.uvarint()
	x := int64(u >> 1)
	if u&1 != 0 {
		x = ^x
	}
	return x
}

func (r *packedReader) time() time.Time {
	if r.byte() == 0 || r.err != nil {
		return time.Time{}
	}
	sec := r.varint()
	nsec := r.uvarint()
	if nsec >= 1e9 {
		r.err = errPackedCorrupt
		return time.Time{}
	}
	return time.Unix(sec, int64(nsec)).UTC()
}

func (r *packedReader) string() string {
	n := r.uvarint()
	if r.err != nil || n > uint64(len(r.p)-r.off) {
		r.err = errPackedCorrupt
		return ""
	}
	s := r.p[r.off : r.off+int(n)]
	r.off += int(n)
	return s
}

// unpack decodes a packed record. Its strings share p's memory.
func unpack(p string) (Credential, error) {
	if len(p) < packedIDLen+2 {
		return Credential{}, errPackedCorrupt
	}
	r := packedReader{p: p, off: packedIDLen}
	t, st := int(r.byte()), int(r.byte())
	if t <= 0 || t >= len(packedTypes) || st <= 0 || st >= len(packedStates) {
		return Credential{}, errPackedCorrupt
	}
	c := Credential{CompanyID: p[:packedIDLen], Type: packedTypes[t], State: packedStates[st]}
	c.Version = r.varint()
	c.ExpiresAt = r.time()
	c.LastRefreshedAt = r.time()
	c.TenantID = r.string()
	c.AccessToken = Secret(r.string())
	c.RefreshToken = Secret(r.string())
	c.APIKey = Secret(r.string())
	c.LastError = r.string()
	if r.err == nil && r.off != len(p) {
		r.err = errPackedCorrupt
	}
	if r.err != nil {
		return Credential{}, r.err
	}
	return c, nil
}

// mustUnpack unpacks a record the store packed itself.
func mustUnpack(p string) Credential {
	c, err := unpack(p)
	if err != nil {
		panic(err)
	}
	return c
}

func packedCompanyID(p string) string { return p[:packedIDLen] }

// packedTenantID returns the record's tenant id without decoding the rest.
func packedTenantID(p string) string {
	r := packedReader{p: p, off: packedIDLen + 2}
	r.varint()
	r.time()
	r.time()
	return r.string()
}

// packedSnapshot is the file store's immutable view of its credentials: packed records sorted
// by company id, looked up by binary search, and the indices of those with a tenant sorted by
// tenant id. Nothing changes it once built, so it is read without a lock.
type packedSnapshot struct {
	recs     []string // packed, sorted by company id, each id once
	byTenant []int32  // indices into recs of the records with a tenant, sorted by tenant id
}

var emptyPackedSnapshot = &packedSnapshot{}

// newPackedSnapshot takes ownership of recs, which must be sorted by company id without
// duplicates, and indexes their tenants.
func newPackedSnapshot(recs []string) *packedSnapshot {
	return &packedSnapshot{recs: recs, byTenant: tenantIndex(recs)}
}

// tenantIndex returns the indices of the records with a tenant, sorted by tenant id (and by
// index among equal tenants, which a valid snapshot does not have).
func tenantIndex(recs []string) []int32 {
	var idx []int32
	for i, p := range recs {
		if packedTenantID(p) != "" {
			if idx == nil {
				idx = make([]int32, 0, len(recs)-i)
			}
			idx = append(idx, int32(i))
		}
	}
	slices.SortFunc(idx, func(a, b int32) int {
		if c := strings.Compare(packedTenantID(recs[a]), packedTenantID(recs[b])); c != 0 {
			return c
		}
		return int(a - b)
	})
	return slices.Clip(idx)
}

func (s *packedSnapshot) len() int { return len(s.recs) }

// find returns the index of the canonical company id's record.
func (s *packedSnapshot) find(companyID string) (int, bool) {
	return slices.BinarySearchFunc(s.recs, companyID, func(p, id string) int {
		return strings.Compare(packedCompanyID(p), id)
	})
}

// findTenant returns the index in recs of the tenant's record.
func (s *packedSnapshot) findTenant(tenantID string) (int, bool) {
	i, ok := slices.BinarySearchFunc(s.byTenant, tenantID, func(j int32, t string) int {
		return strings.Compare(packedTenantID(s.recs[j]), t)
	})
	if !ok {
		return 0, false
	}
	return int(s.byTenant[i]), true
}

func (s *packedSnapshot) get(companyID string) (Credential, error) {
	i, ok := s.find(CanonicalCompanyID(companyID))
	if !ok {
		return Credential{}, ErrNotFound
	}
	return mustUnpack(s.recs[i]), nil
}

func (s *packedSnapshot) getByTenant(tenantID string) (Credential, error) {
	if tenantID == "" {
		return Credential{}, ErrNotFound
	}
	i, ok := s.findTenant(tenantID)
	if !ok {
		return Credential{}, ErrNotFound
	}
	return mustUnpack(s.recs[i]), nil
}

// list returns every credential, ordered by company id, in a slice the caller may modify.
func (s *packedSnapshot) list() []Credential {
	out := make([]Credential, len(s.recs))
	for i, p := range s.recs {
		out[i] = mustUnpack(p)
	}
	return out
}

// diffPacked returns, sorted, the companies added, removed or changed between old and next.
func diffPacked(old, next *packedSnapshot) []string {
	var ids []string
	a, b := old.recs, next.recs
	for len(a) > 0 || len(b) > 0 {
		switch {
		case len(b) == 0 || len(a) > 0 && packedCompanyID(a[0]) < packedCompanyID(b[0]):
			ids = append(ids, packedCompanyID(a[0]))
			a = a[1:]
		case len(a) == 0 || packedCompanyID(b[0]) < packedCompanyID(a[0]):
			ids = append(ids, packedCompanyID(b[0]))
			b = b[1:]
		default:
			if a[0] != b[0] {
				ids = append(ids, packedCompanyID(a[0]))
			}
			a, b = a[1:], b[1:]
		}
	}
	return ids
}
