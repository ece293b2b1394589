package credentials

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
)

// MemoryStore is the memory:// store: credentials in a map guarded by a mutex, lost when the
// process exits. It is meant for tests and --dev. The zero value is not usable; call
// NewMemoryStore.
type MemoryStore struct {
	mu   sync.RWMutex
	snap *storeSnapshot
	subs subscriberSet
}

var _ Store = (*MemoryStore)(nil)

// NewMemoryStore returns an empty memory store.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{snap: newStoreSnapshot(nil)}
}

// Get returns the company's credential, or ErrNotFound.
func (s *MemoryStore) Get(ctx context.Context, companyID string) (Credential, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.snap.get(companyID)
}

// GetByTenant returns the credential whose TenantID is tenantID, or ErrNotFound.
func (s *MemoryStore) GetByTenant(ctx context.Context, tenantID string) (Credential, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.snap.getByTenant(tenantID)
}

// List returns every credential, ordered by company id.
func (s *MemoryStore) List(ctx context.Context) ([]Credential, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.snap.list(), nil
}

// PutAll validates every credential, then adds or replaces them all, or none. Each written
// record's version is one more than the stored one (1 for a new company).
func (s *MemoryStore) PutAll(ctx context.Context, creds []Credential, replaceAll bool) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("credentials: put: %w", err)
	}
	batch, err := prepareBatch(creds)
	if err != nil {
		return err
	}
	s.mu.Lock()
	next := maps.Clone(s.snap.byCompany)
	if err := mergeBatch(mapSet(next), batch, replaceAll); err != nil {
		s.mu.Unlock()
		return err
	}
	changed := s.swapLocked(next)
	s.mu.Unlock()
	s.subs.notify(changed)
	return nil
}

// Update replaces the stored credential if its version equals c.Version, and returns it with
// the next version; otherwise it returns ErrConflict or ErrNotFound.
func (s *MemoryStore) Update(ctx context.Context, c Credential) (Credential, error) {
	return s.writeOne(ctx, "update", c, applyUpdate)
}

// writeOne applies one credential's mutation (applyUpdate, applyCreate) to a copy of the
// snapshot, swaps it in and notifies subscribers.
func (s *MemoryStore) writeOne(ctx context.Context, op string, c Credential, apply func(credentialSet, Credential) (Credential, error)) (Credential, error) {
	if err := ctx.Err(); err != nil {
		return Credential{}, fmt.Errorf("credentials: %s: %w", op, err)
	}
	c, err := prepareOne(c)
	if err != nil {
		return Credential{}, err
	}
	s.mu.Lock()
	next := maps.Clone(s.snap.byCompany)
	written, err := apply(mapSet(next), c)
	if err != nil {
		s.mu.Unlock()
		return Credential{}, err
	}
	changed := s.swapLocked(next)
	s.mu.Unlock()
	s.subs.notify(changed)
	return written, nil
}

// Delete removes the company's credential, or returns ErrNotFound.
func (s *MemoryStore) Delete(ctx context.Context, companyID string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("credentials: delete: %w", err)
	}
	s.mu.Lock()
	next := maps.Clone(s.snap.byCompany)
	if err := applyDelete(mapSet(next), companyID); err != nil {
		s.mu.Unlock()
		return err
	}
	changed := s.swapLocked(next)
	s.mu.Unlock()
	s.subs.notify(changed)
	return nil
}

// Ping always succeeds: memory can always be read.
func (s *MemoryStore) Ping(ctx context.Context) error { return nil }

// Subscribe calls fn, after the change and outside any lock, with the company id of every
// credential a write added, changed or removed.
func (s *MemoryStore) Subscribe(fn func(companyID string)) (unsubscribe func()) {
	return s.subs.subscribe(fn)
}

// Close does nothing; the store stays usable.
func (s *MemoryStore) Close() error { return nil }

// swapLocked installs next and returns the companies whose record differs. s.mu is held.
func (s *MemoryStore) swapLocked(next map[string]Credential) []string {
	old := s.snap
	s.snap = newStoreSnapshot(next)
	return diffCompanies(old.byCompany, s.snap.byCompany)
}

// storeSnapshot is an immutable view of a store's credentials. Nothing mutates its maps once
// newStoreSnapshot returns, so it can be read without a lock.
type storeSnapshot struct {
	byCompany map[string]Credential // canonical company id -> credential
	byTenant  map[string]string     // tenant id -> canonical company id
	sorted    []string              // canonical company ids, in order (the records stay in byCompany only)
}

// newStoreSnapshot takes ownership of byCompany (nil means empty).
func newStoreSnapshot(byCompany map[string]Credential) *storeSnapshot {
	if byCompany == nil {
		byCompany = map[string]Credential{}
	}
	snap := &storeSnapshot{
		byCompany: byCompany,
		byTenant:  make(map[string]string, len(byCompany)),
		sorted:    make([]string, 0, len(byCompany)),
	}
	for id, c := range byCompany {
		if c.TenantID != "" {
			snap.byTenant[c.TenantID] = id
		}
		snap.sorted = append(snap.sorted, id)
	}
	slices.Sort(snap.sorted)
	return snap
}

func (s *storeSnapshot) get(companyID string) (Credential, error) {
	c, ok := s.byCompany[CanonicalCompanyID(companyID)]
	if !ok {
		return Credential{}, ErrNotFound
	}
	return c, nil
}

func (s *storeSnapshot) getByTenant(tenantID string) (Credential, error) {
	if tenantID == "" {
		return Credential{}, ErrNotFound
	}
	id, ok := s.byTenant[tenantID]
	if !ok {
		return Credential{}, ErrNotFound
	}
	return s.byCompany[id], nil
}

// list returns a copy the caller may modify.
func (s *storeSnapshot) list() []Credential {
	out := make([]Credential, len(s.sorted))
	for i, id := range s.sorted {
		out[i] = s.byCompany[id]
	}
	return out
}

// normalizeCredential puts c in the form every store keeps: canonical company id, explicit
// state, times in UTC without a monotonic reading (so they compare equal after a round trip
// through a file).
func normalizeCredential(c Credential) Credential {
	c.CompanyID = CanonicalCompanyID(c.CompanyID)
	if c.State == "" {
		c.State = StateActive
	}
	if !c.ExpiresAt.IsZero() {
		c.ExpiresAt = c.ExpiresAt.UTC()
	}
	if !c.LastRefreshedAt.IsZero() {
		c.LastRefreshedAt = c.LastRefreshedAt.UTC()
	}
	return c
}

// prepareOne normalises and validates one credential for Update.
func prepareOne(c Credential) (Credential, error) {
	c = normalizeCredential(c)
	if err := c.Validate(); err != nil {
		return Credential{}, err
	}
	return c, nil
}

// prepareBatch normalises and validates a PutAll batch into a new slice: every record valid,
// no company or tenant twice.
func prepareBatch(creds []Credential) ([]Credential, error) {
	out := make([]Credential, 0, len(creds))
	companies := make(map[string]int, len(creds))
	tenants := make(map[string]int, len(creds))
	for i, c := range creds {
		c = normalizeCredential(c)
		if err := c.Validate(); err != nil {
			return nil, &RecordError{Index: i, CompanyID: c.CompanyID, Err: err}
		}
		if j, dup := companies[c.CompanyID]; dup {
			return nil, &RecordError{Index: i, CompanyID: c.CompanyID, Err: fmt.Errorf("company_id duplicates record %d", j)}
		}
		companies[c.CompanyID] = i
		if c.TenantID != "" {
			if j, dup := tenants[c.TenantID]; dup {
				return nil, &RecordError{Index: i, CompanyID: c.CompanyID, Err: fmt.Errorf("tenant_id duplicates record %d", j)}
			}
			tenants[c.TenantID] = i
		}
		out = append(out, c)
	}
	return out, nil
}

// credentialSet is what the store mutations below work on, in place: the memory store's map
// (mapSet) and a file store write's changes (fileChanges). Company ids are canonical.
type credentialSet interface {
	lookup(companyID string) (Credential, bool)
	// tenantHolder returns the company whose credential has the tenant id.
	tenantHolder(tenantID string) (companyID string, ok bool)
	put(c Credential)
	remove(companyID string)
	clear()
}

// mergeBatch adds batch, which must come from prepareBatch, to m (with replaceAll, m then
// holds the batch only). A written record's version is the stored one plus one, or 1. It
// fails, leaving m untouched, when a tenant id would name two companies.
func mergeBatch(m credentialSet, batch []Credential, replaceAll bool) error {
	if !replaceAll {
		// The batch has no tenant twice (prepareBatch); it must not take one that a record it
		// leaves in place holds.
		inBatch := make(map[string]bool, len(batch))
		for _, c := range batch {
			inBatch[c.CompanyID] = true
		}
		for i, c := range batch {
			if c.TenantID == "" {
				continue
			}
			if other, taken := m.tenantHolder(c.TenantID); taken && !inBatch[other] {
				return &RecordError{Index: i, CompanyID: c.CompanyID,
					Err: fmt.Errorf("tenant_id is already used by company %s", other)}
			}
		}
	}
	written := make([]Credential, len(batch))
	for i, c := range batch {
		stored, _ := m.lookup(c.CompanyID)
		c.Version = stored.Version + 1
		written[i] = c
	}
	if replaceAll {
		m.clear()
	}
	for _, c := range written {
		m.put(c)
	}
	return nil
}

// applyUpdate is the compare-and-swap of Update, on m; c comes from prepareOne. It returns
// the stored credential, or an error leaving m untouched.
func applyUpdate(m credentialSet, c Credential) (Credential, error) {
	stored, ok := m.lookup(c.CompanyID)
	if !ok {
		return Credential{}, fmt.Errorf("%w: company %s", ErrNotFound, c.CompanyID)
	}
	if stored.Version != c.Version {
		return Credential{}, fmt.Errorf("%w: company %s is at version %d, not %d", ErrConflict, c.CompanyID, stored.Version, c.Version)
	}
	// Only a tenant that changes can collide (a refresh keeps it): no lookup on the refresh path.
	if c.TenantID != "" && c.TenantID != stored.TenantID {
		if other, taken := m.tenantHolder(c.TenantID); taken && other != c.CompanyID {
			return Credential{}, &FieldError{Field: "tenant_id", Reason: "is already used by company " + other}
		}
	}
	c.Version = stored.Version + 1
	m.put(c)
	return c, nil
}

// applyDelete removes companyID from m, or returns ErrNotFound.
func applyDelete(m credentialSet, companyID string) error {
	companyID = CanonicalCompanyID(companyID)
	if _, ok := m.lookup(companyID); !ok {
		return fmt.Errorf("%w: company %s", ErrNotFound, companyID)
	}
	m.remove(companyID)
	return nil
}

// mapSet is a credentialSet over the memory store's map. Finding a tenant's holder scans it:
// the memory store is for tests and --dev.
type mapSet map[string]Credential

func (m mapSet) lookup(companyID string) (Credential, bool) { c, ok := m[companyID]; return c, ok }
func (m mapSet) put(c Credential)                           { m[c.CompanyID] = c }
func (m mapSet) remove(companyID string)                    { delete(m, companyID) }
func (m mapSet) clear()                                     { clear(m) }

func (m mapSet) tenantHolder(tenantID string) (string, bool) {
	for id, c := range m {
		if c.TenantID == tenantID {
			return id, true
		}
	}
	return "", false
}

// diffCompanies returns, sorted, the companies added, removed or changed between old and next.
func diffCompanies(old, next map[string]Credential) []string {
	var ids []string
	for id, o := range old {
		if n, ok := next[id]; !ok || !sameCredential(o, n) {
			ids = append(ids, id)
		}
	}
	for id := range next {
		if _, ok := old[id]; !ok {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

func sameCredential(a, b Credential) bool {
	return a.CompanyID == b.CompanyID && a.TenantID == b.TenantID && a.Type == b.Type &&
		a.AccessToken == b.AccessToken && a.RefreshToken == b.RefreshToken && a.APIKey == b.APIKey &&
		a.ExpiresAt.Equal(b.ExpiresAt) && a.State == b.State &&
		a.LastRefreshedAt.Equal(b.LastRefreshedAt) && a.LastError == b.LastError && a.Version == b.Version
}

// subscriberSet holds Subscribe callbacks. The zero value is ready to use.
type subscriberSet struct {
	mu   sync.Mutex
	next uint64
	fns  map[uint64]func(companyID string)
}

func (s *subscriberSet) subscribe(fn func(companyID string)) func() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fns == nil {
		s.fns = make(map[uint64]func(string))
	}
	id := s.next
	s.next++
	s.fns[id] = fn
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			delete(s.fns, id)
			s.mu.Unlock()
		})
	}
}

// notify calls every subscriber with each id. The caller must hold no store lock: a
// subscriber may read the store.
func (s *subscriberSet) notify(ids []string) {
	if len(ids) == 0 {
		return
	}
	s.mu.Lock()
	fns := make([]func(string), 0, len(s.fns))
	for _, fn := range s.fns {
		fns = append(fns, fn)
	}
	s.mu.Unlock()
	for _, fn := range fns {
		for _, id := range ids {
			fn(id)
		}
	}
}
