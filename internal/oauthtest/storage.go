package oauthtest

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/ory/fosite"
)

// refreshState is the life-cycle state of one stored refresh token.
type refreshState int

const (
	// refreshActive: the token may be exchanged once.
	refreshActive refreshState = iota
	// refreshRotated: the token was exchanged; presenting it again is reuse.
	refreshRotated
	// refreshRevoked: the token was never used but its family was revoked
	// (reuse detection, code reuse, DELETE /v1/installations/me).
	refreshRevoked
)

type codeEntry struct {
	req    fosite.Requester
	active bool
}

type accessEntry struct {
	req     fosite.Requester
	company string
}

type refreshEntry struct {
	req       fosite.Requester
	accessSig string
	company   string
	state     refreshState
}

// traceKey carries a *tokenTrace in the context of one token-endpoint
// request, so the handler learns what state the presented refresh token was
// in (used to count reuse detections) without a second look-up.
type traceKey struct{}

type tokenTrace struct {
	refreshSeen  bool
	refreshState refreshState
}

// store is the fosite storage behind the server: fosite.Storage,
// oauth2.CoreStorage, oauth2.TokenRevocationStorage and
// pkce.PKCERequestStorage. fosite's own storage.MemoryStore is not used
// because its RevokeRefreshToken writes the refresh-token map under the
// wrong mutex (a data race under concurrent refreshes), its
// RotateRefreshToken is not atomic (two concurrent refreshes of one token
// could both succeed), and it deletes a reused refresh token, forgetting it.
//
// A family is one authorisation: every token descending from one
// authorization code shares fosite's request ID.
type store struct {
	clients map[string]fosite.Client // read-only after construction

	mu         sync.RWMutex
	codes      map[string]*codeEntry
	pkces      map[string]fosite.Requester
	access     map[string]*accessEntry
	refresh    map[string]*refreshEntry
	famAccess  map[string]map[string]struct{} // request ID → access signatures
	famRefresh map[string]map[string]struct{} // request ID → refresh signatures
	jtis       map[string]time.Time
}

func newStore(clients ...fosite.Client) *store {
	s := &store{
		clients:    make(map[string]fosite.Client),
		codes:      make(map[string]*codeEntry),
		pkces:      make(map[string]fosite.Requester),
		access:     make(map[string]*accessEntry),
		refresh:    make(map[string]*refreshEntry),
		famAccess:  make(map[string]map[string]struct{}),
		famRefresh: make(map[string]map[string]struct{}),
		jtis:       make(map[string]time.Time),
	}
	for _, c := range clients {
		s.clients[c.GetID()] = c
	}
	return s
}

// companyOf returns the company UUID of a stored request (its session
// subject is urn:pleo:company:<uuid>).
func companyOf(req fosite.Requester) string {
	if req == nil || req.GetSession() == nil {
		return ""
	}
	return strings.TrimPrefix(req.GetSession().GetSubject(), companyURNPrefix)
}

func addToFamily(fam map[string]map[string]struct{}, id, sig string) {
	m := fam[id]
	if m == nil {
		m = make(map[string]struct{})
		fam[id] = m
	}
	m[sig] = struct{}{}
}

// --- fosite.ClientManager ---

func (s *store) GetClient(_ context.Context, id string) (fosite.Client, error) {
	c, ok := s.clients[id]
	if !ok {
		return nil, fosite.ErrNotFound
	}
	return c, nil
}

func (s *store) ClientAssertionJWTValid(_ context.Context, jti string) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if exp, ok := s.jtis[jti]; ok && exp.After(time.Now()) {
		return fosite.ErrJTIKnown
	}
	return nil
}

func (s *store) SetClientAssertionJWT(_ context.Context, jti string, exp time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.jtis[jti]; ok && old.After(time.Now()) {
		return fosite.ErrJTIKnown
	}
	s.jtis[jti] = exp
	return nil
}

// --- oauth2.AuthorizeCodeStorage ---

func (s *store) CreateAuthorizeCodeSession(_ context.Context, sig string, req fosite.Requester) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.codes[sig] = &codeEntry{req: req, active: true}
	return nil
}

func (s *store) GetAuthorizeCodeSession(_ context.Context, sig string, _ fosite.Session) (fosite.Requester, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e, ok := s.codes[sig]
	if !ok {
		return nil, fosite.ErrNotFound
	}
	if !e.active {
		return e.req, fosite.ErrInvalidatedAuthorizeCode
	}
	return e.req, nil
}

func (s *store) InvalidateAuthorizeCodeSession(_ context.Context, sig string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.codes[sig]
	if !ok {
		return fosite.ErrNotFound
	}
	if !e.active {
		return fosite.ErrSerializationFailure
	}
	e.active = false
	return nil
}

// --- pkce.PKCERequestStorage ---

func (s *store) CreatePKCERequestSession(_ context.Context, sig string, req fosite.Requester) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pkces[sig] = req
	return nil
}

func (s *store) GetPKCERequestSession(_ context.Context, sig string, _ fosite.Session) (fosite.Requester, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.pkces[sig]
	if !ok {
		return nil, fosite.ErrNotFound
	}
	return r, nil
}

func (s *store) DeletePKCERequestSession(_ context.Context, sig string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.pkces, sig)
	return nil
}

// --- oauth2.AccessTokenStorage ---

func (s *store) CreateAccessTokenSession(_ context.Context, sig string, req fosite.Requester) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.access[sig] = &accessEntry{req: req, company: companyOf(req)}
	addToFamily(s.famAccess, req.GetID(), sig)
	return nil
}

func (s *store) GetAccessTokenSession(_ context.Context, sig string, _ fosite.Session) (fosite.Requester, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e, ok := s.access[sig]
	if !ok {
		return nil, fosite.ErrNotFound
	}
	return e.req, nil
}

func (s *store) DeleteAccessTokenSession(_ context.Context, sig string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deleteAccessLocked(sig)
	return nil
}

func (s *store) deleteAccessLocked(sig string) {
	e, ok := s.access[sig]
	if !ok {
		return
	}
	delete(s.access, sig)
	id := e.req.GetID()
	if fam := s.famAccess[id]; fam != nil {
		delete(fam, sig)
		if len(fam) == 0 {
			delete(s.famAccess, id)
		}
	}
}

// --- oauth2.RefreshTokenStorage ---

func (s *store) CreateRefreshTokenSession(_ context.Context, sig, accessSig string, req fosite.Requester) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refresh[sig] = &refreshEntry{req: req, accessSig: accessSig, company: companyOf(req), state: refreshActive}
	addToFamily(s.famRefresh, req.GetID(), sig)
	return nil
}

// GetRefreshTokenSession returns fosite.ErrInactiveToken together with the
// stored request for a rotated or revoked token: that is what makes fosite's
// RefreshTokenGrantHandler run its reuse detection (revoke the family).
func (s *store) GetRefreshTokenSession(ctx context.Context, sig string, _ fosite.Session) (fosite.Requester, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e, ok := s.refresh[sig]
	if !ok {
		return nil, fosite.ErrNotFound
	}
	if tr, _ := ctx.Value(traceKey{}).(*tokenTrace); tr != nil {
		tr.refreshSeen = true
		tr.refreshState = e.state
	}
	if e.state != refreshActive {
		return e.req, fosite.ErrInactiveToken
	}
	return e.req, nil
}

// DeleteRefreshTokenSession is called by fosite's reuse detection for the
// reused token. The record is kept (inactive) rather than deleted so that
// every later presentation of it is recognised as reuse again.
func (s *store) DeleteRefreshTokenSession(_ context.Context, sig string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.refresh[sig]; ok && e.state == refreshActive {
		e.state = refreshRevoked
	}
	return nil
}

// RotateRefreshToken marks the presented refresh token as used and
// invalidates every access token of the family, atomically. If the token is
// no longer active (a concurrent refresh won), it fails, so one refresh
// token can never be exchanged twice.
func (s *store) RotateRefreshToken(_ context.Context, requestID, sig string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.refresh[sig]
	if !ok {
		return fosite.ErrNotFound
	}
	if e.state != refreshActive {
		return fosite.ErrSerializationFailure
	}
	e.state = refreshRotated
	for other := range s.famRefresh[requestID] {
		if o := s.refresh[other]; o != nil && o.state == refreshActive {
			o.state = refreshRevoked
		}
	}
	s.revokeAccessFamilyLocked(requestID)
	return nil
}

// --- oauth2.TokenRevocationStorage ---

func (s *store) RevokeRefreshToken(_ context.Context, requestID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.revokeRefreshFamilyLocked(requestID)
	return nil
}

func (s *store) RevokeAccessToken(_ context.Context, requestID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.revokeAccessFamilyLocked(requestID)
	return nil
}

func (s *store) revokeRefreshFamilyLocked(requestID string) {
	for sig := range s.famRefresh[requestID] {
		if e := s.refresh[sig]; e != nil && e.state == refreshActive {
			e.state = refreshRevoked
		}
	}
}

func (s *store) revokeAccessFamilyLocked(requestID string) {
	for sig := range s.famAccess[requestID] {
		delete(s.access, sig)
	}
	delete(s.famAccess, requestID)
}

// --- test controls ---

// revokeCompanyAccess deletes every access token of the company.
func (s *store) revokeCompanyAccess(company string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for sig, e := range s.access {
		if e.company == company {
			s.deleteAccessLocked(sig)
			n++
		}
	}
	return n
}

// revokeCompanyAll revokes every access and refresh token of the company.
func (s *store) revokeCompanyAll(company string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sig, e := range s.access {
		if e.company == company {
			s.deleteAccessLocked(sig)
		}
	}
	for _, e := range s.refresh {
		if e.company == company && e.state == refreshActive {
			e.state = refreshRevoked
		}
	}
}
