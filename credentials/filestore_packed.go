package credentials

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"
)

// The file store keeps each credential as one packed record rather than a Credential (a
// 184-byte struct of ten strings and two times): 100,000 credentials with 43-character
// tokens take about 12 MB instead of about 45 MB, and they are kept outside the Go heap
// (offHeap). A Get copies one record out and unpacks it, in one allocation.
//
// A packed record is, in order:
//
//	company id          16 bytes: the UUID's bytes (its canonical text is lower-case hex)
//	type, state         1 byte: packedTypes index << 4 | packedStates index
//	flags               1 byte: packedExpires, packedRefreshed, and packedB64 << field for
//	                    each secret held decoded (see below)
//	tenant_id           a uvarint length and the bytes
//	version             varint
//	expires_at          if packedExpires: varint Unix seconds, uvarint nanoseconds (UTC)
//	last_refreshed_at   if packedRefreshed: as expires_at
//	access_token, refresh_token, api_key
//	                    each a uvarint length and the bytes; a secret of base64url
//	                    characters only (as OAuth tokens usually are) is held as its length,
//	                    its whole 4-character groups decoded (3 bytes each) and the 0 to 3
//	                    characters left over as they are: about three quarters of its length
//	last_error          a uvarint length and the bytes
//
// Every value is kept exactly, so unpacking a packed credential gives it back unchanged, and
// two packed records are equal exactly when sameCredential says their credentials are.

// packedKeyLen is the length of a packed company id, the first bytes of a record; packed ids
// sort as their canonical texts do.
const packedKeyLen = 16

// packedTypes and packedStates give the codes of types and states (their index).
var (
	packedTypes  = [...]Type{0: "", 1: OAuth2, 2: IntegratedAPIKey, 3: StandaloneAPIKey}
	packedStates = [...]State{0: "", 1: StateActive, 2: StateReauthorizationRequired}
)

// Flags of a packed record.
const (
	packedExpires   = 1 << 0
	packedRefreshed = 1 << 1
	packedB64       = 1 << 2 // << 0, 1, 2: access_token, refresh_token, api_key held decoded
)

var b64 = base64.RawURLEncoding.Strict()

// companyKey returns the packed form of a company id in either case, or false if it is not
// a UUID.
func companyKey(id string) (key [packedKeyLen]byte, ok bool) {
	if !ValidCompanyID(id) {
		return key, false
	}
	var text [32]byte
	n := 0
	for i := 0; i < len(id); i++ {
		if id[i] != '-' {
			text[n] = id[i] | 0x20 // lower case; digits are unchanged
			n++
		}
	}
	if _, err := hex.Decode(key[:], text[:]); err != nil {
		return key, false
	}
	return key, true
}

// appendCompanyID appends the canonical text of a packed company id.
func appendCompanyID(b []byte, key string) []byte {
	const digits = "0123456789abcdef"
	for i := 0; i < packedKeyLen; i++ {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			b = append(b, '-')
		}
		b = append(b, digits[key[i]>>4], digits[key[i]&0xf])
	}
	return b
}

// companyIDOf returns the canonical text of a packed company id.
func companyIDOf(key string) string { return string(appendCompanyID(nil, key)) }

// appendPacked appends c, which must be normalised (normalizeCredential) and valid, packed.
func appendPacked(b []byte, c Credential) ([]byte, error) {
	key, ok := companyKey(c.CompanyID)
	if !ok || CanonicalCompanyID(c.CompanyID) != c.CompanyID {
		return nil, fmt.Errorf("credentials: pack: company id %q is not canonical", c.CompanyID)
	}
	t := slices.Index(packedTypes[:], c.Type)
	st := slices.Index(packedStates[:], c.State)
	if t <= 0 || st <= 0 {
		return nil, fmt.Errorf("credentials: pack: company %s: unknown type %q or state %q", c.CompanyID, c.Type, c.State)
	}
	secrets := [3]string{c.AccessToken.Reveal(), c.RefreshToken.Reveal(), c.APIKey.Reveal()}
	var flags byte
	if !c.ExpiresAt.IsZero() {
		flags |= packedExpires
	}
	if !c.LastRefreshedAt.IsZero() {
		flags |= packedRefreshed
	}
	for i, v := range secrets {
		if isB64URL(v) {
			flags |= packedB64 << i
		}
	}
	b = append(b, key[:]...)
	b = append(b, byte(t<<4|st), flags)
	b = appendPackedString(b, c.TenantID)
	b = binary.AppendVarint(b, c.Version)
	for _, tm := range [...]time.Time{c.ExpiresAt, c.LastRefreshedAt} {
		if !tm.IsZero() {
			b = binary.AppendVarint(b, tm.Unix())
			b = binary.AppendUvarint(b, uint64(tm.Nanosecond()))
		}
	}
	for i, v := range secrets {
		if flags&(packedB64<<i) == 0 {
			b = appendPackedString(b, v)
			continue
		}
		whole := len(v) / 4 * 4
		b = binary.AppendUvarint(b, uint64(len(v)))
		var err error
		if b, err = b64.AppendDecode(b, []byte(v[:whole])); err != nil {
			return nil, fmt.Errorf("credentials: pack: %w", err) // isB64URL said it decodes
		}
		b = append(b, v[whole:]...)
	}
	return appendPackedString(b, c.LastError), nil
}

func appendPackedString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// isB64URL reports whether s is at least 4 characters of the base64url alphabet. Whole
// groups of 4 such characters decode to 3 bytes that encode back to them exactly.
func isB64URL(s string) bool {
	if len(s) < 4 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// packedSize is an upper bound of c's packed length.
func packedSize(c Credential) int {
	return packedKeyLen + 2 + 3*binary.MaxVarintLen64 + 2*binary.MaxVarintLen32 + 5*binary.MaxVarintLen32 +
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

func (r *packedReader) time(present bool) time.Time {
	if !present {
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

func (r *packedReader) string() string { return r.bytes(r.uvarint()) }

func (r *packedReader) bytes(n uint64) string {
	if r.err != nil || n > uint64(len(r.p)-r.off) {
		r.err = errPackedCorrupt
		return ""
	}
	s := r.p[r.off : r.off+int(n)]
	r.off += int(n)
	return s
}

// b64String reads a secret held as base64url (see appendPacked): its decoded groups and the
// characters left over, and its length as text.
func (r *packedReader) b64String() (groups, rest string, n int) {
	l := r.uvarint()
	if r.err != nil || l > 4*uint64(len(r.p)) {
		r.err = errPackedCorrupt
		return "", "", 0
	}
	groups = r.bytes(l / 4 * 3)
	rest = r.bytes(l % 4)
	return groups, rest, int(l)
}

// unpack decodes a packed record into a new Credential, with its secrets or without them
// (left empty): its strings share one allocation, and none of p's memory (which may be a view).
func unpack(p string, withSecrets bool) (Credential, error) {
	if len(p) < packedKeyLen+2 {
		return Credential{}, errPackedCorrupt
	}
	r := packedReader{p: p, off: packedKeyLen}
	ts, flags := r.byte(), r.byte()
	t, st := int(ts>>4), int(ts&0xf)
	if t <= 0 || t >= len(packedTypes) || st <= 0 || st >= len(packedStates) {
		return Credential{}, errPackedCorrupt
	}
	c := Credential{Type: packedTypes[t], State: packedStates[st]}
	tenant := r.string()
	c.Version = r.varint()
	c.ExpiresAt = r.time(flags&packedExpires != 0)
	c.LastRefreshedAt = r.time(flags&packedRefreshed != 0)
	var secrets, rests [3]string
	size := 36 + len(tenant)
	for i := range secrets {
		if flags&(packedB64<<i) != 0 {
			var n int
			secrets[i], rests[i], n = r.b64String()
			if withSecrets {
				size += n
			}
		} else {
			secrets[i] = r.string()
			if withSecrets {
				size += len(secrets[i])
			}
		}
	}
	lastError := r.string()
	size += len(lastError)
	if r.err == nil && r.off != len(p) {
		r.err = errPackedCorrupt
	}
	if r.err != nil {
		return Credential{}, r.err
	}

	// One buffer for every string; it is never written again once they point into it.
	buf := make([]byte, 0, size)
	field := func(start int) string {
		if start == len(buf) {
			return ""
		}
		return unsafe.String(&buf[start], len(buf)-start)
	}
	buf = appendCompanyID(buf, p[:packedKeyLen])
	c.CompanyID = field(0)
	n := len(buf)
	buf = append(buf, tenant...)
	c.TenantID = field(n)
	for i, v := range secrets {
		n = len(buf)
		if !withSecrets {
			secrets[i] = ""
			continue
		}
		if flags&(packedB64<<i) != 0 {
			buf = b64.AppendEncode(buf, []byte(v))
			buf = append(buf, rests[i]...)
		} else {
			buf = append(buf, v...)
		}
		secrets[i] = field(n)
	}
	c.AccessToken, c.RefreshToken, c.APIKey = Secret(secrets[0]), Secret(secrets[1]), Secret(secrets[2])
	n = len(buf)
	buf = append(buf, lastError...)
	c.LastError = field(n)
	if len(buf) != size {
		return Credential{}, errPackedCorrupt
	}
	return c, nil
}

// mustUnpack unpacks a record the store packed itself.
func mustUnpack(p string, withSecrets bool) Credential {
	c, err := unpack(p, withSecrets)
	if err != nil {
		panic(err)
	}
	return c
}

// packedKey returns the record's packed company id (a view when p is one).
func packedKey(p string) string { return p[:packedKeyLen] }

// packedTenantID returns the record's tenant id (a view when p is one).
func packedTenantID(p string) string {
	r := packedReader{p: p, off: packedKeyLen + 2}
	return r.string()
}

// packedSnapshot is the file store's immutable view of its credentials: packed records in
// memory outside the Go heap (offHeap), their offsets sorted by company id (looked up by
// binary search), and the indices of those with a tenant sorted by tenant id. Nothing changes
// it once built, so it is read without a lock; every credential it hands out is a copy.
//
// Its memory is freed when its reference count drops to zero: it starts at one, the
// reference of whoever built it, which installing it in the store passes on to the store;
// readers acquire and release one while they read; replacing it in the store releases the
// store's. The store's current snapshot can also be read by whoever holds the store's write
// semaphore, which is also the only way to replace it.
type packedSnapshot struct {
	mem       *offHeap     // the records; nil when there are none
	idx       *offHeap     // byCompany and byTenant; nil when there are no records
	byCompany []uint32     // offsets in mem, sorted by company id (in idx)
	byTenant  []int32      // indices into byCompany of the records with a tenant, sorted by tenant id (in idx)
	refs      atomic.Int64 // see above
}

// newEmptySnapshot returns a snapshot of no credentials (nothing to free).
func newEmptySnapshot() *packedSnapshot {
	p := &packedSnapshot{}
	p.refs.Store(1)
	return p
}

// tryAcquire takes a reference, unless the snapshot was freed already.
func (p *packedSnapshot) tryAcquire() bool {
	for {
		n := p.refs.Load()
		if n <= 0 {
			return false
		}
		if p.refs.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// release drops a reference, freeing the records with the last one.
func (p *packedSnapshot) release() {
	switch n := p.refs.Add(-1); {
	case n == 0 && p.mem != nil:
		p.byCompany, p.byTenant = nil, nil
		p.mem.free()
		p.idx.free()
	case n < 0:
		panic("credentials: packed snapshot released once too often")
	}
}

func (p *packedSnapshot) len() int { return len(p.byCompany) }

// view returns record i (in company order) as a view into the records: see offHeap.view.
func (p *packedSnapshot) view(i int) string { return p.mem.view(p.byCompany[i]) }

// credential returns record i, unpacked (a copy).
func (p *packedSnapshot) credential(i int) Credential { return mustUnpack(p.view(i), true) }

// metadata returns record i without its secrets (a copy).
func (p *packedSnapshot) metadata(i int) Credential { return mustUnpack(p.view(i), false) }

// companyID returns record i's company id (a copy).
func (p *packedSnapshot) companyID(i int) string { return companyIDOf(packedKey(p.view(i))) }

// find returns the index of the company's record; the id may be in either case.
func (p *packedSnapshot) find(companyID string) (int, bool) {
	key, ok := companyKey(companyID)
	if !ok {
		return 0, false
	}
	return p.findKey(key)
}

// findKey returns the index of the record of a packed company id.
func (p *packedSnapshot) findKey(key [packedKeyLen]byte) (int, bool) {
	return slices.BinarySearchFunc(p.byCompany, string(key[:]), func(off uint32, key string) int {
		return strings.Compare(packedKey(p.mem.view(off)), key)
	})
}

// findTenant returns the index of the tenant's record.
func (p *packedSnapshot) findTenant(tenantID string) (int, bool) {
	i, ok := slices.BinarySearchFunc(p.byTenant, tenantID, func(j int32, t string) int {
		return strings.Compare(packedTenantID(p.view(int(j))), t)
	})
	if !ok {
		return 0, false
	}
	return int(p.byTenant[i]), true
}

func (p *packedSnapshot) get(companyID string) (Credential, error) {
	i, ok := p.find(companyID)
	if !ok {
		return Credential{}, ErrNotFound
	}
	return p.credential(i), nil
}

func (p *packedSnapshot) getByTenant(tenantID string) (Credential, error) {
	if tenantID == "" {
		return Credential{}, ErrNotFound
	}
	i, ok := p.findTenant(tenantID)
	if !ok {
		return Credential{}, ErrNotFound
	}
	return p.credential(i), nil
}

// list returns every credential, ordered by company id, in a slice the caller may modify.
func (p *packedSnapshot) list() []Credential {
	out := make([]Credential, p.len())
	for i := range out {
		out[i] = p.credential(i)
	}
	return out
}

// diffPacked returns, sorted, the companies added, removed or changed between old and next.
func diffPacked(old, next *packedSnapshot) []string {
	var ids []string
	i, j := 0, 0
	for i < old.len() || j < next.len() {
		var a, b string
		if i < old.len() {
			a = old.view(i)
		}
		if j < next.len() {
			b = next.view(j)
		}
		switch {
		case j == next.len() || i < old.len() && packedKey(a) < packedKey(b):
			ids = append(ids, old.companyID(i))
			i++
		case i == old.len() || packedKey(b) < packedKey(a):
			ids = append(ids, next.companyID(j))
			j++
		default:
			if a != b {
				ids = append(ids, old.companyID(i))
			}
			i, j = i+1, j+1
		}
	}
	return ids
}

// snapshotBuilder packs credentials into a new snapshot's records.
type snapshotBuilder struct {
	mem    *offHeap
	offs   []uint32 // in the order added
	packer packer
}

// newSnapshotBuilder starts a snapshot; size is a guess of the records' packed size.
func newSnapshotBuilder(size int) (*snapshotBuilder, error) {
	mem, err := newOffHeap(size)
	if err != nil {
		return nil, err
	}
	return &snapshotBuilder{mem: mem}, nil
}

// add packs c, normalised and valid.
func (b *snapshotBuilder) add(c Credential) error {
	p, err := b.packer.view(c)
	if err != nil {
		return err
	}
	return b.addPacked(p)
}

// addPacked adds a packed record (copied: it may be a view).
func (b *snapshotBuilder) addPacked(p string) error {
	off, err := b.mem.append(p)
	if err != nil {
		return err
	}
	b.offs = append(b.offs, off)
	return nil
}

func (b *snapshotBuilder) view(i int) string { return b.mem.view(b.offs[i]) }

// abandon frees what was built.
func (b *snapshotBuilder) abandon() { b.mem.free() }

// finish returns the snapshot of the records added, which must be sorted by company id
// without duplicates; byTenant, if not nil, is their tenant index.
func (b *snapshotBuilder) finish(byTenant []int32) (*packedSnapshot, error) {
	p := &packedSnapshot{}
	p.refs.Store(1)
	if len(b.offs) == 0 {
		b.mem.free()
		return p, nil
	}
	p.mem, p.byCompany = b.mem, b.offs
	if byTenant == nil {
		byTenant = p.tenantIndex()
	}
	// The indices go outside the heap too, 4 bytes per record each.
	idx, err := newOffHeap(4 * (len(b.offs) + len(byTenant)))
	if err != nil {
		b.mem.free()
		return nil, err
	}
	p.idx = idx
	p.byCompany = unsafe.Slice((*uint32)(unsafe.Pointer(&idx.full[0])), len(b.offs))
	copy(p.byCompany, b.offs)
	if len(byTenant) > 0 {
		p.byTenant = unsafe.Slice((*int32)(unsafe.Pointer(&idx.full[4*len(b.offs)])), len(byTenant))
		copy(p.byTenant, byTenant)
	}
	idx.n = 4 * (len(b.offs) + len(byTenant))
	return p, nil
}

// tenantIndex returns the indices of the records with a tenant, sorted by tenant id.
func (p *packedSnapshot) tenantIndex() []int32 {
	var idx []int32
	for i := range p.len() {
		if packedTenantID(p.view(i)) != "" {
			idx = append(idx, int32(i))
		}
	}
	slices.SortFunc(idx, func(a, b int32) int {
		if c := strings.Compare(packedTenantID(p.view(int(a))), packedTenantID(p.view(int(b)))); c != 0 {
			return c
		}
		return int(a - b)
	})
	return slices.Clip(idx)
}
