package mockpleo

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Credential types reported by the API.
const (
	// CredentialOAuth2 is an OAuth access token sent as a Bearer token.
	CredentialOAuth2 = "oauth2"
	// CredentialAPIKey is an API key sent as HTTP Basic with an empty password.
	CredentialAPIKey = "api_key"
)

// Echo is the 200 answer of the echo API (every API path without a special
// meaning).
type Echo struct {
	// Method is the request method.
	Method string `json:"method"`
	// Path is the decoded request path.
	Path string `json:"path"`
	// RawQuery is the query string as received, without '?'.
	RawQuery string `json:"raw_query"`
	// RequestURI is the request target as received.
	RequestURI string `json:"request_uri"`
	// Host is the Host header as received.
	Host string `json:"host"`
	// CompanyID is the company of the credential that authenticated the request.
	CompanyID string `json:"company_id"`
	// CredentialType is CredentialOAuth2 or CredentialAPIKey.
	CredentialType string `json:"credential_type"`
	// Headers are the request headers except Authorization and Cookie.
	Headers http.Header `json:"headers"`
	// BodyLength is the number of body bytes received.
	BodyLength int64 `json:"body_length"`
	// BodySHA256 is the hex SHA-256 of the body received.
	BodySHA256 string `json:"body_sha256"`
}

// credential is what authenticated an API request.
type credential struct {
	companyID string
	typ       string
	scope     string
	apiKey    string // for CredentialAPIKey
}

// apiProblem is the API's error body.
type apiProblem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
}

func (s *Server) apiError(w http.ResponseWriter, status int, code, detail string) {
	if status == http.StatusUnauthorized {
		s.unauthorized.Add(1)
	}
	writeJSON(w, status, apiProblem{
		Type:   "urn:mockpleo:problem:" + code,
		Title:  http.StatusText(status),
		Status: status,
		Detail: detail,
	})
}

// authenticate applies Pleo's credential rules to r. On failure it has
// already answered 401.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request) (*credential, bool) {
	values := r.Header.Values("Authorization")
	if len(values) == 0 {
		w.Header().Add("WWW-Authenticate", `Bearer realm="pleo"`)
		w.Header().Add("WWW-Authenticate", `Basic realm="pleo"`)
		s.apiError(w, http.StatusUnauthorized, "unauthorized", "no credential")
		return nil, false
	}
	if len(values) > 1 {
		s.apiError(w, http.StatusUnauthorized, "unauthorized", "more than one Authorization header")
		return nil, false
	}
	scheme, rest, _ := strings.Cut(values[0], " ")
	now := s.now()
	switch strings.ToLower(scheme) {
	case "bearer":
		s.mu.Lock()
		at, why := s.validAccessLocked(rest, now)
		var cred *credential
		if at != nil {
			cred = &credential{companyID: at.fam.companyID, typ: CredentialOAuth2, scope: at.fam.scope}
		}
		s.mu.Unlock()
		if cred == nil {
			if rest == "" {
				why = "empty bearer token"
			}
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			s.apiError(w, http.StatusUnauthorized, "unauthorized", why)
			return nil, false
		}
		return cred, true
	case "basic":
		fail := func(why string) (*credential, bool) {
			w.Header().Set("WWW-Authenticate", `Basic realm="pleo"`)
			s.apiError(w, http.StatusUnauthorized, "unauthorized", why)
			return nil, false
		}
		key, pass, ok := r.BasicAuth()
		switch {
		case !ok:
			return fail(`malformed Basic credential; send base64("<key>:")`)
		case pass != "":
			return fail("an API key goes as the user name with an empty password")
		case key == "":
			return fail("empty API key")
		}
		s.mu.Lock()
		k := s.apiKeys[key]
		var cred *credential
		expired := false
		if k != nil {
			if !k.expiresAt.IsZero() && !now.Before(k.expiresAt) {
				expired = true
			} else {
				cred = &credential{companyID: k.companyID, typ: CredentialAPIKey, apiKey: key}
			}
		}
		s.mu.Unlock()
		switch {
		case expired:
			return fail("API key expired")
		case cred == nil:
			return fail("unknown API key")
		}
		return cred, true
	default:
		w.Header().Add("WWW-Authenticate", `Bearer realm="pleo"`)
		w.Header().Add("WWW-Authenticate", `Basic realm="pleo"`)
		s.apiError(w, http.StatusUnauthorized, "unauthorized", "unsupported Authorization scheme")
		return nil, false
	}
}

func (s *Server) handleAPI(w http.ResponseWriter, r *http.Request) {
	s.apiCalls.Add(1)
	cred, ok := s.authenticate(w, r)
	if !ok {
		return
	}
	// Credentials are company-scoped: never another company's id.
	for _, id := range r.URL.Query()["company_id"] {
		if !strings.EqualFold(id, cred.companyID) {
			s.apiError(w, http.StatusForbidden, "forbidden", "the credential does not belong to company_id "+id)
			return
		}
	}
	s.log.Debug("api request", "method", r.Method, "path", r.URL.Path,
		"company_id", cred.companyID, "credential_type", cred.typ)
	path := r.URL.Path
	switch {
	case path == "/v1/installations/me":
		s.handleInstallation(w, r, cred)
	case path == "/v1/introspect":
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			s.apiError(w, http.StatusMethodNotAllowed, "method_not_allowed", "")
			return
		}
		body := map[string]any{
			"subjectURN":      CompanyURNPrefix + cred.companyID,
			"company_id":      cred.companyID,
			"credential_type": cred.typ,
		}
		if cred.typ == CredentialOAuth2 {
			body["scope"] = cred.scope
		}
		writeJSON(w, http.StatusOK, body)
	case path == "/v1/mock/stream":
		s.handleStream(w, r, cred)
	case path == "/v1/mock/redirect":
		to := r.URL.Query().Get("to")
		if to == "" {
			to = "/v1/mock/elsewhere"
		}
		w.Header().Set("Location", to)
		w.WriteHeader(http.StatusFound)
	case strings.HasPrefix(path, "/v1/mock/status/"):
		code, err := strconv.Atoi(strings.TrimPrefix(path, "/v1/mock/status/"))
		if err != nil || code < 200 || code > 599 {
			s.apiError(w, http.StatusBadRequest, "bad_request", "status must be 200-599")
			return
		}
		if code == http.StatusUnauthorized {
			s.unauthorized.Add(1)
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		}
		if code == http.StatusNoContent || code == http.StatusNotModified {
			w.WriteHeader(code)
			return
		}
		writeJSON(w, code, map[string]any{"status": code, "company_id": cred.companyID})
	default:
		s.echo(w, r, cred)
	}
}

func (s *Server) handleInstallation(w http.ResponseWriter, r *http.Request, cred *credential) {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		writeJSON(w, http.StatusOK, map[string]any{
			"resource":        CompanyURNPrefix + cred.companyID,
			"company_id":      cred.companyID,
			"credential_type": cred.typ,
		})
	case http.MethodDelete:
		// Pleo: revokes all of the client's tokens for this company.
		s.mu.Lock()
		for _, fam := range s.families[strings.ToLower(cred.companyID)] {
			if fam.clientID == s.clientID {
				fam.revoked = true
			}
		}
		if cred.typ == CredentialAPIKey {
			delete(s.apiKeys, cred.apiKey)
		}
		s.mu.Unlock()
		s.log.Info("installation deleted: tokens revoked", "company_id", cred.companyID)
		w.WriteHeader(http.StatusNoContent)
	default:
		w.Header().Set("Allow", "GET, HEAD, DELETE")
		s.apiError(w, http.StatusMethodNotAllowed, "method_not_allowed", "")
	}
}

func (s *Server) echo(w http.ResponseWriter, r *http.Request, cred *credential) {
	h := sha256.New()
	n, err := io.Copy(h, r.Body)
	if err != nil {
		s.apiError(w, http.StatusBadRequest, "bad_request", "reading the body: "+err.Error())
		return
	}
	headers := r.Header.Clone()
	headers.Del("Authorization")
	headers.Del("Cookie")
	writeJSON(w, http.StatusOK, Echo{
		Method:         r.Method,
		Path:           r.URL.Path,
		RawQuery:       r.URL.RawQuery,
		RequestURI:     r.RequestURI,
		Host:           r.Host,
		CompanyID:      cred.companyID,
		CredentialType: cred.typ,
		Headers:        headers,
		BodyLength:     n,
		BodySHA256:     hex.EncodeToString(h.Sum(nil)),
	})
}

// streamChunk is one line of /v1/mock/stream.
type streamChunk struct {
	Chunk     int    `json:"chunk"`
	Of        int    `json:"of"`
	CompanyID string `json:"company_id"`
}

// handleStream writes chunks newline-delimited JSON objects, flushing each and
// waiting interval (real time) between them.
func (s *Server) handleStream(w http.ResponseWriter, r *http.Request, cred *credential) {
	q := r.URL.Query()
	chunks, interval := 3, time.Duration(0)
	if v := q.Get("chunks"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 100000 {
			s.apiError(w, http.StatusBadRequest, "bad_request", "chunks must be 0-100000")
			return
		}
		chunks = n
	}
	if v := q.Get("interval"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			s.apiError(w, http.StatusBadRequest, "bad_request", "interval must be a Go duration such as 100ms")
			return
		}
		interval = d
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	_ = rc.Flush()
	for i := 1; i <= chunks; i++ {
		if i > 1 && interval > 0 {
			t := time.NewTimer(interval)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return
			}
		}
		line, _ := json.Marshal(streamChunk{Chunk: i, Of: chunks, CompanyID: cred.companyID})
		if _, err := w.Write(append(line, '\n')); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}
