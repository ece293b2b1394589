package mockpleo

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
)

// maxFormBytes bounds the bodies of the authorisation server's endpoints.
const maxFormBytes = 64 << 10

var (
	// verifierRE is RFC 7636's code_verifier: 43-128 unreserved characters.
	verifierRE = regexp.MustCompile(`^[A-Za-z0-9\-._~]{43,128}$`)
	// challengeRE is an S256 code_challenge: base64url (no padding) of 32 bytes.
	challengeRE = regexp.MustCompile(`^[A-Za-z0-9\-_]{43}$`)
	// scopeRE is one Pleo scope, resource:permission.
	scopeRE = regexp.MustCompile(`^[A-Za-z0-9._\-]+:[A-Za-z0-9._\-]+$`)
)

// oauthError is an RFC 6749 section 5.2 error answer.
type oauthError struct {
	status int
	code   string
	desc   string
}

func (e *oauthError) Error() string { return e.code + ": " + e.desc }

func writeOAuthError(w http.ResponseWriter, e *oauthError) {
	if e.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="pleo"`)
	}
	w.Header().Set("Cache-Control", "no-store")
	body := map[string]string{"error": e.code}
	if e.desc != "" {
		body["error_description"] = e.desc
	}
	writeJSON(w, e.status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// readForm reads a POSTed application/x-www-form-urlencoded body strictly:
// no parameter twice (RFC 6749 section 3.2).
func readForm(w http.ResponseWriter, r *http.Request) (url.Values, *oauthError) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return nil, &oauthError{http.StatusMethodNotAllowed, "invalid_request", "use POST"}
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/x-www-form-urlencoded" {
		return nil, &oauthError{http.StatusBadRequest, "invalid_request", "the body must be application/x-www-form-urlencoded"}
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		return nil, &oauthError{http.StatusBadRequest, "invalid_request", "unreadable form body"}
	}
	for k, v := range r.PostForm {
		if len(v) > 1 {
			return nil, &oauthError{http.StatusBadRequest, "invalid_request", "parameter " + k + " repeated"}
		}
	}
	return r.PostForm, nil
}

// authenticateClient enforces client_secret_basic and returns the client id.
func (s *Server) authenticateClient(r *http.Request, form url.Values) (string, *oauthError) {
	query := r.URL.Query()
	for _, p := range []string{"client_id", "client_secret"} {
		if form.Has(p) || query.Has(p) {
			return "", &oauthError{http.StatusUnauthorized, "invalid_client",
				"client authentication must use HTTP Basic (client_secret_basic); " + p + " is not accepted as a parameter"}
		}
	}
	user, pass, ok := r.BasicAuth()
	if !ok {
		return "", &oauthError{http.StatusUnauthorized, "invalid_client", "HTTP Basic client authentication required"}
	}
	// RFC 6749 section 2.3.1: the id and secret are form-encoded first.
	id, err1 := url.QueryUnescape(user)
	secret, err2 := url.QueryUnescape(pass)
	if err1 != nil || err2 != nil {
		return "", &oauthError{http.StatusUnauthorized, "invalid_client", "malformed client credentials"}
	}
	idOK := subtle.ConstantTimeCompare([]byte(id), []byte(s.clientID)) == 1
	secretOK := subtle.ConstantTimeCompare([]byte(secret), []byte(s.clientSecret)) == 1
	if !idOK || !secretOK {
		return "", &oauthError{http.StatusUnauthorized, "invalid_client", "client authentication failed"}
	}
	return id, nil
}

func (s *Server) tokenSettings() (failStatus int, delay time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failStatus, s.tokenDelay
}

// tokenResponse is the 200 answer of /oauth/token.
type tokenResponse struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	RefreshToken string `json:"refresh_token"`
	Scope        string `json:"scope"`
}

func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	s.tokenCalls.Add(1)
	failStatus, delay := s.tokenSettings()
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	form, formErr := readForm(w, r)
	grant := form.Get("grant_type") // nil form: ""
	switch grant {
	case "refresh_token":
		s.refreshCalls.Add(1)
	case "authorization_code":
		s.codeExchanges.Add(1)
	}
	if failStatus != 0 {
		s.log.Info("token endpoint failure injected", "status", failStatus, "grant_type", grant)
		writeOAuthError(w, &oauthError{failStatus, "temporarily_unavailable", "injected failure"})
		return
	}
	if formErr != nil {
		writeOAuthError(w, formErr)
		return
	}
	clientID, authErr := s.authenticateClient(r, form)
	if authErr != nil {
		s.log.Info("token request refused", "error", authErr.code, "reason", authErr.desc)
		writeOAuthError(w, authErr)
		return
	}
	var (
		resp *tokenResponse
		oerr *oauthError
	)
	switch grant {
	case "refresh_token":
		resp, oerr = s.refreshGrant(clientID, form)
	case "authorization_code":
		resp, oerr = s.codeGrant(clientID, form)
	case "":
		oerr = &oauthError{http.StatusBadRequest, "invalid_request", "grant_type missing"}
	default:
		oerr = &oauthError{http.StatusBadRequest, "unsupported_grant_type", "supported: authorization_code, refresh_token"}
	}
	if oerr != nil {
		if oerr.code == "invalid_grant" {
			s.invalidGrants.Add(1)
		}
		writeOAuthError(w, oerr)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) refreshGrant(clientID string, form url.Values) (*tokenResponse, *oauthError) {
	token := form.Get("refresh_token")
	if token == "" {
		return nil, &oauthError{http.StatusBadRequest, "invalid_request", "refresh_token missing"}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rt, ok := s.validRefreshLocked(token, s.now())
	if rt == nil {
		return nil, &oauthError{http.StatusBadRequest, "invalid_grant", "unknown refresh token"}
	}
	fam := rt.fam
	if !ok || fam.clientID != clientID {
		// Pleo: presenting an expired or already-used refresh token
		// invalidates every token of that authorisation.
		fam.revoked = true
		s.reuseDetections.Add(1)
		s.log.Warn("refresh token reuse: authorisation revoked", "company_id", fam.companyID, "family", fam.id)
		return nil, &oauthError{http.StatusBadRequest, "invalid_grant", "refresh token no longer valid; authorisation revoked"}
	}
	if req := form.Get("scope"); req != "" {
		granted := strings.Fields(fam.scope)
		for _, sc := range strings.Fields(req) {
			if !slices.Contains(granted, sc) {
				return nil, &oauthError{http.StatusBadRequest, "invalid_scope", "scope " + sc + " was not granted"}
			}
		}
	}
	at, newRT, _ := s.issueLocked(fam)
	s.log.Info("token refreshed", "company_id", fam.companyID, "family", fam.id)
	return &tokenResponse{AccessToken: at, TokenType: "Bearer", ExpiresIn: s.expiresIn(), RefreshToken: newRT, Scope: fam.scope}, nil
}

func (s *Server) codeGrant(clientID string, form url.Values) (*tokenResponse, *oauthError) {
	code, redirectURI, verifier := form.Get("code"), form.Get("redirect_uri"), form.Get("code_verifier")
	switch {
	case code == "":
		return nil, &oauthError{http.StatusBadRequest, "invalid_request", "code missing"}
	case redirectURI == "":
		return nil, &oauthError{http.StatusBadRequest, "invalid_request", "redirect_uri missing"}
	case verifier == "":
		return nil, &oauthError{http.StatusBadRequest, "invalid_request", "code_verifier missing"}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.codes[code]
	if c == nil {
		return nil, &oauthError{http.StatusBadRequest, "invalid_grant", "unknown authorization code"}
	}
	if c.used {
		// RFC 6749 section 4.1.2: a code used twice revokes what it gave.
		if c.fam != nil {
			c.fam.revoked = true
			s.log.Warn("authorization code reuse: authorisation revoked", "company_id", c.companyID, "family", c.fam.id)
		}
		return nil, &oauthError{http.StatusBadRequest, "invalid_grant", "authorization code already used"}
	}
	c.used = true // single use, whatever the outcome
	switch {
	case !s.now().Before(c.expiresAt):
		return nil, &oauthError{http.StatusBadRequest, "invalid_grant", "authorization code expired"}
	case c.clientID != clientID:
		return nil, &oauthError{http.StatusBadRequest, "invalid_grant", "authorization code issued to another client"}
	case c.redirectURI != redirectURI:
		return nil, &oauthError{http.StatusBadRequest, "invalid_grant", "redirect_uri does not match the authorization request"}
	case !verifierRE.MatchString(verifier):
		return nil, &oauthError{http.StatusBadRequest, "invalid_grant", "code_verifier must be 43-128 characters of A-Z a-z 0-9 - . _ ~"}
	case subtle.ConstantTimeCompare([]byte(s256(verifier)), []byte(c.challenge)) != 1:
		return nil, &oauthError{http.StatusBadRequest, "invalid_grant", "code_verifier does not match code_challenge"}
	}
	fam := s.newFamilyLocked(c.companyID, clientID, c.scope)
	c.fam = fam
	at, rt, _ := s.issueLocked(fam)
	s.log.Info("authorization code exchanged", "company_id", fam.companyID, "family", fam.id)
	return &tokenResponse{AccessToken: at, TokenType: "Bearer", ExpiresIn: s.expiresIn(), RefreshToken: rt, Scope: fam.scope}, nil
}

func s256(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// validRedirectURI: absolute, no fragment, https, or http on localhost.
func validRedirectURI(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || !u.IsAbs() || u.Host == "" || u.Opaque != "" {
		return errors.New("redirect_uri must be an absolute URL")
	}
	if u.Fragment != "" || strings.Contains(raw, "#") {
		return errors.New("redirect_uri must not have a fragment")
	}
	if u.User != nil {
		return errors.New("redirect_uri must not carry user information")
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		switch h := u.Hostname(); h {
		case "localhost", "127.0.0.1", "::1":
			return nil
		default:
			if ip := net.ParseIP(h); ip != nil && ip.IsLoopback() {
				return nil
			}
		}
		return errors.New("redirect_uri must use https except on localhost")
	}
	return errors.New("redirect_uri must use https except on localhost")
}

func (s *Server) handleAuthorize(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		http.Error(w, "malformed query", http.StatusBadRequest)
		return
	}
	// Errors that cannot go back to the client: the client and redirect_uri.
	for _, p := range []string{"client_id", "redirect_uri"} {
		if len(q[p]) != 1 || q.Get(p) == "" {
			http.Error(w, p+" missing or repeated", http.StatusBadRequest)
			return
		}
	}
	if q.Get("client_id") != s.clientID {
		http.Error(w, "unknown client_id", http.StatusBadRequest)
		return
	}
	redirectURI := q.Get("redirect_uri")
	if err := validRedirectURI(redirectURI); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if !s.redirectRegistered(redirectURI) {
		http.Error(w, "redirect_uri is not registered for this client", http.StatusBadRequest)
		return
	}
	state := q.Get("state")
	fail := func(code, desc string) {
		s.log.Info("authorization request refused", "error", code, "reason", desc)
		redirectTo(w, redirectURI, url.Values{"error": {code}, "error_description": {desc}, "state": {state}})
	}
	for k, v := range q {
		if len(v) > 1 {
			fail("invalid_request", "parameter "+k+" repeated")
			return
		}
	}
	switch {
	case q.Get("response_type") != "code":
		fail("unsupported_response_type", "response_type must be code")
		return
	case state == "":
		fail("invalid_request", "state missing")
		return
	case q.Get("code_challenge") == "":
		fail("invalid_request", "code_challenge missing (PKCE is required)")
		return
	case q.Get("code_challenge_method") != "S256":
		fail("invalid_request", "code_challenge_method must be S256")
		return
	case !challengeRE.MatchString(q.Get("code_challenge")):
		fail("invalid_request", "code_challenge must be the base64url SHA-256 of the verifier")
		return
	}
	scope := strings.Join(strings.Fields(q.Get("scope")), " ")
	for _, sc := range strings.Fields(scope) {
		if !scopeRE.MatchString(sc) {
			fail("invalid_scope", fmt.Sprintf("scope %q is not resource:permission", sc))
			return
		}
	}
	if q.Get("mock_deny") == "1" {
		fail("access_denied", "the user denied access (mock_deny=1)")
		return
	}
	company := q.Get("mock_company_id")
	if company == "" {
		company = s.consentCo
	}
	if company == "" {
		company = newUUID()
	} else if !isUUID(company) {
		http.Error(w, "mock_company_id must be a UUID", http.StatusBadRequest)
		return
	}
	code := newToken()
	s.mu.Lock()
	s.codes[code] = &authCode{
		clientID:    s.clientID,
		redirectURI: redirectURI,
		challenge:   q.Get("code_challenge"),
		companyID:   company,
		scope:       scope,
		expiresAt:   s.now().Add(CodeTTL),
	}
	s.mu.Unlock()
	s.log.Info("authorization granted", "company_id", company)
	redirectTo(w, redirectURI, url.Values{"code": {code}, "state": {state}})
}

// SetRedirectURIs registers the client's redirect URIs: from now on an
// authorisation request's redirect_uri must equal one of them exactly (Pleo's
// rule); with none registered (the default) any valid redirect URI is taken.
func (s *Server) SetRedirectURIs(uris ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.redirects = append([]string(nil), uris...)
}

func (s *Server) redirectRegistered(uri string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.redirects) == 0 || slices.Contains(s.redirects, uri)
}

// redirectTo answers 302 to base with params added to its query.
func redirectTo(w http.ResponseWriter, base string, params url.Values) {
	u, _ := url.Parse(base) // validated by validRedirectURI
	q := u.Query()
	for k, v := range params {
		if len(v) == 1 && v[0] == "" {
			continue
		}
		q[k] = v
	}
	u.RawQuery = q.Encode()
	w.Header().Set("Location", u.String())
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusFound)
}

func (s *Server) handleIntrospect(w http.ResponseWriter, r *http.Request) {
	form, ferr := readForm(w, r)
	if ferr != nil {
		writeOAuthError(w, ferr)
		return
	}
	clientID, aerr := s.authenticateClient(r, form)
	if aerr != nil {
		writeOAuthError(w, aerr)
		return
	}
	token := form.Get("token")
	if token == "" {
		writeOAuthError(w, &oauthError{http.StatusBadRequest, "invalid_request", "token missing"})
		return
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	var (
		fam                 *family
		issuedAt, expiresAt time.Time
		kind                string
	)
	if at, _ := s.validAccessLocked(token, now); at != nil {
		fam, issuedAt, expiresAt, kind = at.fam, at.issuedAt, at.expiresAt, "access_token"
	} else if rt, ok := s.validRefreshLocked(token, now); ok {
		fam, issuedAt, expiresAt, kind = rt.fam, rt.issuedAt, rt.expiresAt, "refresh_token"
	}
	// Only the client that obtained a token may introspect it.
	if fam == nil || fam.clientID != clientID {
		writeJSON(w, http.StatusOK, map[string]any{"active": false})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"active":     true,
		"client_id":  fam.clientID,
		"sub":        CompanyURNPrefix + fam.companyID,
		"company_id": fam.companyID,
		"scope":      fam.scope,
		"token_type": kind,
		"iat":        issuedAt.Unix(),
		"exp":        expiresAt.Unix(),
	})
}
