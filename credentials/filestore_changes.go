package credentials

import (
	"slices"
)

// fileChanges is what a file store write does to the credentials it read: the snapshot as
// read, and the credentials it adds, replaces or removes. A write costs the changes, not a
// copy of every credential; building the result reuses every unchanged packed record.
//
// It is a credentialSet: the memory store's mutations (mergeBatch, applyUpdate, applyDelete)
// work on it, with the same results and errors.
type fileChanges struct {
	base    *packedSnapshot
	cleared bool                   // nothing of base is kept (PutAll with replaceAll)
	changed map[string]*Credential // canonical company id -> its new credential; nil: removed
	tenants map[string]string      // tenant id -> company id, of the credentials in changed
}

var _ credentialSet = (*fileChanges)(nil)

func newFileChanges(base *packedSnapshot) *fileChanges {
	return &fileChanges{base: base, changed: make(map[string]*Credential), tenants: make(map[string]string)}
}

// lookup returns the company's current credential.
func (w *fileChanges) lookup(companyID string) (Credential, bool) {
	if c, ok := w.changed[companyID]; ok {
		if c == nil {
			return Credential{}, false
		}
		return *c, true
	}
	if w.cleared {
		return Credential{}, false
	}
	i, ok := w.base.find(companyID)
	if !ok {
		return Credential{}, false
	}
	return w.base.credential(i), true
}

// tenantHolder returns the company whose current credential has the tenant id.
func (w *fileChanges) tenantHolder(tenantID string) (string, bool) {
	if id, ok := w.tenants[tenantID]; ok {
		return id, true
	}
	if w.cleared {
		return "", false
	}
	i, ok := w.base.findTenant(tenantID)
	if !ok {
		return "", false
	}
	id := w.base.companyID(i)
	if _, changed := w.changed[id]; changed {
		return "", false // its current credential is in changed, with another tenant
	}
	return id, true
}

func (w *fileChanges) forget(companyID string) {
	if prev, ok := w.lookup(companyID); ok && prev.TenantID != "" && w.tenants[prev.TenantID] == companyID {
		delete(w.tenants, prev.TenantID)
	}
}

func (w *fileChanges) put(c Credential) {
	w.forget(c.CompanyID)
	w.changed[c.CompanyID] = &c
	if c.TenantID != "" {
		w.tenants[c.TenantID] = c.CompanyID
	}
}

func (w *fileChanges) remove(companyID string) {
	w.forget(companyID)
	w.changed[companyID] = nil
}

func (w *fileChanges) clear() {
	w.cleared = true
	clear(w.changed)
	clear(w.tenants)
}

// count returns how many credentials there are now.
func (w *fileChanges) count() int {
	n := 0
	if !w.cleared {
		n = w.base.len()
	}
	for id, c := range w.changed {
		_, inBase := w.base.find(id)
		inBase = inBase && !w.cleared
		switch {
		case c == nil && inBase:
			n--
		case c != nil && !inBase:
			n++
		}
	}
	return n
}

// build returns the snapshot the changes make: base itself when nothing changed, else a new
// one holding base's unchanged records and the changed ones (and base's tenant index when no
// record was added or removed and no tenant changed).
func (w *fileChanges) build() (*packedSnapshot, error) {
	if len(w.changed) == 0 && !w.cleared {
		return w.base, nil
	}
	ids := make([]string, 0, len(w.changed))
	sameIndex := !w.cleared
	size := 0
	if !w.cleared && w.base.mem != nil {
		size = w.base.mem.n
	}
	for id, c := range w.changed {
		ids = append(ids, id)
		if c != nil {
			size += packedSize(*c)
		}
		if sameIndex {
			i, ok := w.base.find(id)
			sameIndex = ok && c != nil && packedTenantID(w.base.view(i)) == c.TenantID
		}
	}
	slices.Sort(ids) // the order of their packed forms too
	b, err := newSnapshotBuilder(size)
	if err != nil {
		return nil, err
	}
	n := 0 // base records up to n are placed
	if w.cleared {
		n = w.base.len()
	}
	for _, id := range ids {
		k, _ := companyKey(id)
		key := string(k[:])
		for ; n < w.base.len() && packedKey(w.base.view(n)) < key; n++ {
			if err := b.addPacked(w.base.view(n)); err != nil {
				b.abandon()
				return nil, err
			}
		}
		if n < w.base.len() && packedKey(w.base.view(n)) == key {
			n++ // replaced or removed
		}
		if c := w.changed[id]; c != nil {
			if err := b.add(*c); err != nil {
				b.abandon()
				return nil, err
			}
		}
	}
	for ; n < w.base.len(); n++ {
		if err := b.addPacked(w.base.view(n)); err != nil {
			b.abandon()
			return nil, err
		}
	}
	if sameIndex {
		return b.finish(w.base.byTenant)
	}
	return b.finish(nil)
}
