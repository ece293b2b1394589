// Package connect is the OAuth 2.0 consent flow of the connect listener: GET /connect, with a
// link the integration had the sidecar sign for a tenant (see Links), starts an
// authorisation code grant with PKCE (S256) at Pleo for that tenant, and the callback (the
// path of the redirect URI) exchanges the code, learns the company from
// GET /v1/installations/me, and stores an oauth2 credential for that company and tenant. A
// binding is never moved by a consent: a company connected to another tenant, or a tenant
// connected to another company, is refused (409) and nothing is stored.
//
// Nothing is kept server-side between the two requests but a set of used state ids: the
// state parameter is the flow itself (id, tenant, PKCE verifier, issue time, browser
// binding), sealed with AES-256-GCM. It expires after StateTTL, completes at most once per
// process, and only in the browser that started it (a cookie carries the binding).
package connect

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"time"
	"unicode/utf8"

	"golang.org/x/oauth2"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/metrics"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/redact"
)

// ConnectPath is where a consent flow starts: GET /connect?tenant_id=…&expires=…&nonce=…&sig=….
const ConnectPath = "/connect"

// CookieName is the cookie that binds a flow to the browser that started it.
const CookieName = "pleo_connect"

// maxTenantLen bounds a tenant id, as the data listener's tenant header does.
const maxTenantLen = 256

// defaultMaxUsedStates bounds the used-state set (see Options.MaxUsedStates).
const defaultMaxUsedStates = 100_000

// completionTimeout bounds a callback's work once its state is accepted: the code exchange,
// the installation look-up and the store write.
const completionTimeout = time.Minute

// defaultAccessTTL is assumed when a token response carries no expires_in (Pleo's older
// documentation: 15 minutes), as the broker does.
const defaultAccessTTL = 15 * time.Minute

// Options configures a Handler. The OAuth fields, RedirectURL, Upstream and Store are
// required.
type Options struct {
	// ClientID and ClientSecret are the integration's OAuth client; the secret goes to the
	// token endpoint by HTTP Basic only.
	ClientID     string
	ClientSecret credentials.Secret
	// ClientSecretSource, if set, returns the client secret for each code exchange instead
	// of ClientSecret (a secret file re-read while the process runs).
	ClientSecretSource func() credentials.Secret
	// AuthorizeURL and TokenURL are Pleo's authorisation and token endpoints.
	AuthorizeURL *url.URL
	TokenURL     *url.URL
	// RedirectURL is the redirect_uri registered with Pleo (matched exactly there); its path
	// is the callback's.
	RedirectURL *url.URL
	// Scopes are asked for, space-separated, in this order.
	Scopes []string
	// SuccessURL, if set, is where a completed flow sends the browser: 303 See Other, with
	// tenant_id and company_id added to its query. Nil shows the result page instead.
	SuccessURL *url.URL
	// Upstream is Pleo's external API, asked GET /v1/installations/me with the new token.
	Upstream *url.URL
	// Store receives the credential. Its change notifications make a Broker drop any cached
	// credential of the company. A credentials.Creator (every store of this module) makes a
	// company's first binding atomic; later ones are compare-and-swap updates.
	Store credentials.Store
	// Links verifies the signed links GET /connect takes. Required unless UnsignedLinks.
	Links *Links
	// UnsignedLinks accepts GET /connect?tenant_id=… without a signature, for a deployment
	// whose ingress authenticates and authorises /connect itself. A link that carries a
	// signature is still verified, when Links is set.
	UnsignedLinks bool
	// StateKeys seal the state (AES-256-GCM, keys derived with HKDF): the first seals, any
	// opens. Pass the encryption keys so every replica opens every replica's states; nil
	// makes a random key, so a flow must end on the replica that started it.
	StateKeys [][]byte
	// HTTPClient calls the token endpoint and the upstream (default: 30s timeout). Redirects
	// are never followed whatever its CheckRedirect.
	HTTPClient *http.Client
	// MaxUsedStates bounds the used-state set; when it is full of unexpired ids, callbacks
	// are refused (default 100000).
	MaxUsedStates int
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger receives one line per flow start and end (never a code, state or token).
	Logger *slog.Logger
	// Metrics records started, completed and failed flows (nil: none).
	Metrics *metrics.Metrics
	// Secrets learns the tokens obtained, so logs redact them by value (nil: none).
	Secrets *redact.Set
	// OnConnected, when set, is told about each credential a flow stored (it must not block).
	OnConnected func(credentials.Credential)
}

// Handler serves GET /connect and the callback. Every other path is 404.
type Handler struct {
	oauth        *oauth2.Config
	clientSecret func() credentials.Secret // the current client secret, or nil: oauth's
	callbackPath string
	success      *url.URL
	secureCookie bool
	upstream     *url.URL
	store        credentials.Store
	links        *Links
	unsigned     bool
	sealer       *sealer
	used         *usedStates
	client       *http.Client
	now          func() time.Time
	log          *slog.Logger
	metrics      *metrics.Metrics
	secrets      *redact.Set
	onConnected  func(credentials.Credential)
}

// New checks opts and builds the handler.
func New(opts Options) (*Handler, error) {
	switch {
	case opts.ClientID == "" || opts.ClientSecret.IsZero():
		return nil, errors.New("connect: an OAuth client id and secret are required")
	case opts.AuthorizeURL == nil || opts.TokenURL == nil:
		return nil, errors.New("connect: the authorize and token URLs are required")
	case opts.RedirectURL == nil || !opts.RedirectURL.IsAbs():
		return nil, errors.New("connect: an absolute redirect URL is required")
	case opts.Upstream == nil:
		return nil, errors.New("connect: the upstream URL is required")
	case opts.Store == nil:
		return nil, errors.New("connect: a store is required")
	case opts.Links == nil && !opts.UnsignedLinks:
		return nil, errors.New("connect: a link signer is required unless unsigned links are allowed")
	}
	callback := opts.RedirectURL.Path
	if callback == "" {
		callback = "/"
	}
	if callback == ConnectPath {
		return nil, fmt.Errorf("connect: the redirect URL's path must not be %s", ConnectPath)
	}
	if opts.MaxUsedStates <= 0 {
		opts.MaxUsedStates = defaultMaxUsedStates
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	client := noRedirectClient(nil, 30*time.Second)
	if opts.HTTPClient != nil {
		c := *opts.HTTPClient
		c.CheckRedirect = client.CheckRedirect
		if c.Transport == nil { // never http.DefaultTransport, which takes proxies from the environment
			c.Transport = client.Transport
		}
		client = &c
	}
	redirect := opts.RedirectURL.String()
	s, err := newSealer(opts.StateKeys, "pleo-auth-proxy/connect-state\x00"+opts.ClientID+"\x00"+redirect)
	if err != nil {
		return nil, err
	}
	return &Handler{
		oauth: &oauth2.Config{
			ClientID:     opts.ClientID,
			ClientSecret: opts.ClientSecret.Reveal(),
			Endpoint: oauth2.Endpoint{
				AuthURL:   opts.AuthorizeURL.String(),
				TokenURL:  opts.TokenURL.String(),
				AuthStyle: oauth2.AuthStyleInHeader,
			},
			RedirectURL: redirect,
			Scopes:      append([]string(nil), opts.Scopes...),
		},
		clientSecret: opts.ClientSecretSource,
		callbackPath: callback,
		success:      opts.SuccessURL,
		secureCookie: opts.RedirectURL.Scheme == "https",
		upstream:     opts.Upstream,
		store:        opts.Store,
		links:        opts.Links,
		unsigned:     opts.UnsignedLinks,
		sealer:       s,
		used:         newUsedStates(opts.MaxUsedStates),
		client:       client,
		now:          opts.Now,
		log:          opts.Logger,
		metrics:      opts.Metrics,
		secrets:      opts.Secrets,
		onConnected:  opts.OnConnected,
	}, nil
}

// ServeHTTP routes GET /connect and GET <callback path>.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var serve func(http.ResponseWriter, *http.Request)
	switch r.URL.Path {
	case ConnectPath:
		serve = h.start
	case h.callbackPath:
		serve = h.callback
	default:
		writePage(w, http.StatusNotFound, page{Title: "Not found", Message: "There is nothing here."})
		return
	}
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		writePage(w, http.StatusMethodNotAllowed, page{Title: "Method not allowed", Message: "Only GET is served here."})
		return
	}
	serve(w, r)
}

// start answers GET /connect with a signed link (see Links) with a 302 to the
// authorisation endpoint; any other link answers 403 and starts nothing.
func (h *Handler) start(w http.ResponseWriter, r *http.Request) {
	tenant, ok := h.linkTenant(w, r)
	if !ok {
		return
	}

	// One binding per browser, reused across tabs so parallel flows all complete.
	browser, ok := cookieBinding(r)
	if !ok {
		if _, err := rand.Read(browser[:]); err != nil {
			h.internalError(w, "random", err)
			return
		}
	}
	st := flowState{Browser: browser, IssuedAt: h.now().Truncate(time.Second), Verifier: oauth2.GenerateVerifier(), Tenant: tenant}
	if _, err := rand.Read(st.ID[:]); err != nil {
		h.internalError(w, "random", err)
		return
	}
	state, err := h.sealer.seal(st)
	if err != nil {
		h.internalError(w, "sealing the state", err)
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name:     CookieName,
		Value:    hex.EncodeToString(browser[:]),
		Path:     "/", // sent to /connect too, so every tab of a browser shares one binding
		MaxAge:   int(StateTTL / time.Second),
		Secure:   h.secureCookie,
		HttpOnly: true,
		SameSite: http.SameSiteLaxMode, // sent on the top-level redirect back from Pleo
	})
	securityHeaders(w.Header())
	w.Header().Set("Location", h.oauth.AuthCodeURL(state, oauth2.S256ChallengeOption(st.Verifier)))
	w.WriteHeader(http.StatusFound)
	h.metrics.ConnectStarted()
	h.log.Info("consent flow started", "tenant_id", tenant)
}

// linkTenant returns the tenant a GET /connect may start a flow for, or answers the request
// itself (403 for a link that is not validly signed, counted as link_refused; 400 for a
// malformed unsigned link where those are allowed) and returns false.
func (h *Handler) linkTenant(w http.ResponseWriter, r *http.Request) (string, bool) {
	if h.links != nil && (!h.unsigned || hasSignature(r.URL.RawQuery)) {
		tenant, err := h.links.Verify(r.URL.RawQuery)
		if err != nil {
			h.refuseLink(w, err)
			return "", false
		}
		return tenant, true
	}
	// Unsigned links (PLEO_PROXY_CONNECT_UNSIGNED_LINKS): the tenant comes from the query.
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil || len(q[LinkTenantParam]) != 1 {
		writePage(w, http.StatusBadRequest, page{Title: "Cannot connect",
			Message: "The link must name exactly one tenant: " + ConnectPath + "?tenant_id=<your tenant id>."})
		return "", false
	}
	tenant := q.Get(LinkTenantParam)
	if msg := checkTenant(tenant); msg != "" {
		writePage(w, http.StatusBadRequest, page{Title: "Cannot connect", Message: msg,
			Details: []detail{{"Tenant", echo(tenant)}}})
		return "", false
	}
	return tenant, true
}

// hasSignature reports whether a query carries a link signature parameter.
func hasSignature(rawQuery string) bool {
	q, _ := url.ParseQuery(rawQuery) // what parses is enough to tell
	return len(q[LinkSigParam]) > 0
}

// refuseLink answers a /connect whose link did not verify: 403, no cookie, no redirect.
func (h *Handler) refuseLink(w http.ResponseWriter, err error) {
	h.metrics.ConnectLinkRefused()
	p := page{Title: "Link not valid"}
	switch {
	case errors.Is(err, ErrLinkExpired):
		p.Message = "This connection link has expired. Nothing was started: ask your application for a new link."
	case errors.Is(err, ErrLinkUnsigned):
		p.Message = "This connection link was not issued by your application. Nothing was started: " +
			"start from your application, which gives you a link to connect Pleo."
	default:
		p.Message = "This connection link is not valid (it was altered or not issued here). Nothing was started: " +
			"ask your application for a new link."
	}
	h.log.Warn("consent flow refused: link not valid", "reason", err.Error())
	writePage(w, http.StatusForbidden, p)
}

// checkTenant returns why a tenant id is refused, or "".
func checkTenant(t string) string {
	switch {
	case t == "":
		return "The tenant id is empty."
	case len(t) > maxTenantLen:
		return fmt.Sprintf("The tenant id is longer than %d bytes.", maxTenantLen)
	case !utf8.ValidString(t):
		return "The tenant id is not valid UTF-8."
	}
	for i := 0; i < len(t); i++ {
		if t[i] < 0x20 || t[i] == 0x7f {
			return "The tenant id contains control characters."
		}
	}
	return ""
}

// cookieBinding returns the browser binding from the request's cookie, if it has a valid one.
func cookieBinding(r *http.Request) (b [16]byte, ok bool) {
	c, err := r.Cookie(CookieName)
	if err != nil || len(c.Value) != 2*len(b) {
		return b, false
	}
	if _, err := hex.Decode(b[:], []byte(c.Value)); err != nil {
		return b, false
	}
	return b, true
}

// failure is a callback that stored nothing.
type failure struct {
	status int
	reason string // metrics label
	page   page
	err    error      // for the log; never a secret
	level  slog.Level // of the log line; the zero value is Info, raised to Warn
}

// callback completes a flow: state, code exchange, company, store.
func (h *Handler) callback(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	tenant, company, f := h.complete(ctx, r)
	if f != nil {
		h.metrics.ConnectFailed(f.reason)
		attrs := []any{"reason", f.reason, "status", f.status}
		if tenant != "" {
			attrs = append(attrs, "tenant_id", tenant)
		}
		if company != "" {
			attrs = append(attrs, "company_id", company)
		}
		if f.err != nil {
			attrs = append(attrs, "error", f.err.Error())
		}
		h.log.Log(ctx, max(f.level, slog.LevelWarn), "consent flow failed", attrs...)
		writePage(w, f.status, f.page)
		return
	}
	h.metrics.ConnectCompleted()
	h.log.Info("consent flow completed: credential stored", "tenant_id", tenant, "company_id", company)
	if h.success != nil {
		u := *h.success
		q := u.Query()
		q.Set("tenant_id", tenant)
		q.Set("company_id", company)
		u.RawQuery = q.Encode()
		securityHeaders(w.Header())
		http.Redirect(w, r, u.String(), http.StatusSeeOther)
		return
	}
	writePage(w, http.StatusOK, page{OK: true, Title: "Connected",
		Message: "Pleo is now connected. You can close this window.",
		Details: []detail{{"Tenant", echo(tenant)}, {"Pleo company", company}}})
}

// complete runs the callback and returns the tenant and company as far as they are known,
// and a failure, or nil once the credential is stored.
func (h *Handler) complete(ctx context.Context, r *http.Request) (tenant, company string, f *failure) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return "", "", stateFailure(ErrStateInvalid, err)
	}
	for _, p := range []string{"state", "code", "error", "tenant_id"} {
		if len(q[p]) > 1 {
			return "", "", stateFailure(ErrStateInvalid, fmt.Errorf("parameter %s repeated", p))
		}
	}
	st, err := h.sealer.open(q.Get("state"))
	if err != nil {
		return "", "", stateFailure(err, nil)
	}
	now := h.now()
	browser, _ := cookieBinding(r)
	if err := st.check(now, browser[:]); err != nil {
		return st.Tenant, "", stateFailure(err, nil)
	}
	// The tenant comes from the state only; a callback naming another is refused.
	if t, present := q["tenant_id"]; present && t[0] != st.Tenant {
		return st.Tenant, "", stateFailure(ErrStateInvalid, errors.New("callback names another tenant than its state"))
	}
	if err := h.used.use(st.ID, st.IssuedAt.Add(StateTTL), now); err != nil {
		return st.Tenant, "", stateFailure(err, nil)
	}

	if e := q.Get("error"); e != "" {
		return st.Tenant, "", authorizeFailure(e, q.Get("error_description"))
	}
	code := q.Get("code")
	if code == "" {
		return st.Tenant, "", &failure{status: http.StatusBadRequest, reason: metrics.ConnectOther,
			page: page{Title: "Connection failed", Message: "Pleo sent no authorisation code."}}
	}

	// From here the code is spent: finish (exchange, look-up, store) even if the browser
	// goes away, so tokens Pleo issued are not dropped half-way.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), completionTimeout)
	defer cancel()
	ctx = context.WithValue(ctx, oauth2.HTTPClient, h.client)
	conf := h.oauth
	if h.clientSecret != nil {
		c := *conf
		c.ClientSecret = h.clientSecret().Reveal()
		conf = &c
	}
	tok, err := conf.Exchange(ctx, code, oauth2.VerifierOption(st.Verifier))
	if err != nil {
		return st.Tenant, "", exchangeFailure(err)
	}
	access, refresh := tok.AccessToken, tok.RefreshToken
	if h.secrets != nil {
		h.secrets.Add(access, refresh)
	}
	if access == "" {
		return st.Tenant, "", &failure{status: http.StatusBadGateway, reason: metrics.ConnectExchangeFailed,
			err:  errors.New("token response without an access token"),
			page: page{Title: "Connection failed", Message: "Pleo's answer carried no access token. Nothing was stored; try again later."}}
	}
	if refresh == "" {
		return st.Tenant, "", h.noRefreshToken(ctx, access, st.Tenant)
	}

	company, err = LookupCompany(ctx, h.client, h.upstream, credentials.Secret("Bearer "+access))
	if err != nil {
		return st.Tenant, "", &failure{status: http.StatusBadGateway, reason: metrics.ConnectCompanyLookupFailed, err: err,
			page: page{Title: "Connection failed", Message: "Pleo did not say which company was connected. Nothing was stored; try again later."}}
	}

	expires := tok.Expiry
	if expires.IsZero() {
		expires = now.Add(defaultAccessTTL)
	}
	cred := credentials.Credential{
		CompanyID:       company,
		TenantID:        st.Tenant,
		Type:            credentials.OAuth2,
		AccessToken:     credentials.Secret(access),
		RefreshToken:    credentials.Secret(refresh),
		ExpiresAt:       expires.UTC(),
		State:           credentials.StateActive,
		LastRefreshedAt: now.UTC(),
	}
	if f := h.storeCredential(ctx, cred); f != nil {
		return st.Tenant, company, f
	}
	return st.Tenant, company, nil
}

// noRefreshTokenHint says which scopes grant a refresh token.
const noRefreshTokenHint = "the scopes requested (PLEO_PROXY_OAUTH_SCOPES) must include the one that grants offline access " +
	"(a refresh token), e.g. offline_access or offline, as the authorisation server names it"

// noRefreshToken is a code exchange whose answer carried an access token but no refresh
// token: the connection cannot be kept past the access token's life, so nothing is stored
// and what was issued is revoked (DELETE /v1/installations/me, best effort).
func (h *Handler) noRefreshToken(ctx context.Context, access, tenant string) *failure {
	revoked, said := "revoked", "the access Pleo granted was revoked"
	if err := Revoke(ctx, h.client, h.upstream, credentials.Secret("Bearer "+access)); err != nil {
		revoked, said = "not revoked: "+err.Error(), "the access Pleo granted could not be revoked (it expires by itself)"
		h.log.Warn("consent flow: could not revoke the tokens of an answer without a refresh token", "tenant_id", tenant, "error", err)
	} else {
		h.log.Info("consent flow: revoked the tokens of an answer without a refresh token", "tenant_id", tenant)
	}
	return &failure{status: http.StatusBadGateway, reason: metrics.ConnectNoRefreshToken,
		err: fmt.Errorf("token response without a refresh token (access token %s): %s", revoked, noRefreshTokenHint),
		page: page{Title: "Connection failed",
			Message: "Pleo granted access without a refresh token, so the connection could not be kept. " +
				"Nothing was stored, and " + said + ". The operator must request the scope that grants offline access.",
			Details: []detail{{"Reason", "no_refresh_token"}, {"Hint", noRefreshTokenHint}}}}
}

// maxStoreAttempts bounds storeCredential's compare-and-swap retries.
const maxStoreAttempts = 5

// storeCredential binds the company to the tenant, or refreshes that binding, and never
// moves one: a company stored with another tenant, or a tenant held by another company, is
// a 409 tenant_conflict and nothing is written. A company stored without a tenant (put by an
// operator) is bound to this one. The check and the write are one atomic step against the
// store: a first binding is a credentials.Create (add-if-absent), a reconnect an Update
// (compare-and-swap on the version read with the check), and a lost race is checked again.
func (h *Handler) storeCredential(ctx context.Context, cred credentials.Credential) *failure {
	storeFailed := func(err error) *failure {
		return &failure{status: http.StatusServiceUnavailable, reason: metrics.ConnectStoreFailed, err: err,
			page: page{Title: "Connection failed", Message: "The connection could not be saved. Nothing was stored; try again later."}}
	}
	for range maxStoreAttempts {
		other, err := h.store.GetByTenant(ctx, cred.TenantID)
		switch {
		case err == nil && other.CompanyID != cred.CompanyID:
			return tenantTaken(cred, other.CompanyID)
		case err != nil && !errors.Is(err, credentials.ErrNotFound):
			return storeFailed(err)
		}
		prev, err := h.store.Get(ctx, cred.CompanyID)
		switch {
		case err == nil:
			if prev.TenantID != "" && prev.TenantID != cred.TenantID {
				return companyBound(cred, prev.TenantID)
			}
			next := cred
			next.Version = prev.Version
			_, err = h.store.Update(ctx, next)
		case errors.Is(err, credentials.ErrNotFound):
			_, err = credentials.Create(ctx, h.store, cred)
		default:
			return storeFailed(err)
		}
		var fe *credentials.FieldError
		switch {
		case err == nil:
			if h.onConnected != nil {
				h.onConnected(cred.Metadata())
			}
			return nil
		case errors.Is(err, credentials.ErrConflict), errors.Is(err, credentials.ErrExists), errors.Is(err, credentials.ErrNotFound):
			continue // another writer got there first: check again against what it wrote
		case errors.As(err, &fe) && fe.Field == "tenant_id":
			continue // the tenant was taken meanwhile: the next check names by whom
		default:
			return storeFailed(err)
		}
	}
	return storeFailed(errors.New("the company's credential kept changing during the write"))
}

// companyBound is a consent for a company connected to another tenant.
func companyBound(cred credentials.Credential, boundTenant string) *failure {
	return &failure{status: http.StatusConflict, reason: metrics.ConnectTenantConflict, level: slog.LevelError,
		err: fmt.Errorf("company is connected to tenant %q; a consent flow does not move it to tenant %q", echo(boundTenant), echo(cred.TenantID)),
		page: page{Title: "Already connected to another tenant",
			Message: "This Pleo company is already connected to another tenant, and a connection link does not move it. " +
				"Nothing was stored. If the company should move, the operator must disconnect it first.",
			Details: []detail{{"Pleo company", cred.CompanyID}, {"Connected to tenant", echo(boundTenant)},
				{"This link's tenant", echo(cred.TenantID)}}}}
}

// tenantTaken is a consent for a tenant connected to another company.
func tenantTaken(cred credentials.Credential, otherCompany string) *failure {
	return &failure{status: http.StatusConflict, reason: metrics.ConnectTenantConflict, level: slog.LevelError,
		err: fmt.Errorf("tenant is connected to company %s; a consent flow does not replace it", otherCompany),
		page: page{Title: "Already connected", Message: "This tenant is already connected to another Pleo company. " +
			"Nothing was stored. If it should change, the operator must disconnect that company first.",
			Details: []detail{{"Tenant", echo(cred.TenantID)}, {"Pleo company", cred.CompanyID}}}}
}

func (h *Handler) internalError(w http.ResponseWriter, what string, err error) {
	h.log.Error("consent flow: internal error", "step", what, "error", err)
	writePage(w, http.StatusInternalServerError, page{Title: "Internal error", Message: "Something went wrong; try again."})
}

func stateFailure(err error, cause error) *failure {
	f := &failure{status: http.StatusBadRequest, reason: metrics.ConnectInvalidState, err: err}
	if cause != nil {
		f.err = fmt.Errorf("%w: %w", err, cause)
	}
	f.page.Title = "Connection failed"
	switch {
	case errors.Is(err, ErrStateExpired):
		f.page.Message = fmt.Sprintf("This sign-in took longer than %d minutes and has expired. Nothing was stored: start again from your application.", int(StateTTL/time.Minute))
	case errors.Is(err, ErrStateUsed):
		f.page.Message = "This sign-in link was already used. Nothing more was stored."
	case errors.Is(err, ErrStateBrowser):
		f.page.Message = "This sign-in was started in another browser (or on another address). " +
			"Nothing was stored: start again from your application, in the browser you sign in to Pleo with."
	case errors.Is(err, ErrBusy):
		f.status, f.reason = http.StatusServiceUnavailable, metrics.ConnectOther
		f.page.Message = "Too many connections are in progress. Nothing was stored; try again in a few minutes."
	default:
		f.page.Message = "This sign-in link is not valid. Nothing was stored: start again from your application."
	}
	return f
}

// authorizeFailure is a callback carrying error=… from the authorisation server.
func authorizeFailure(code, description string) *failure {
	f := &failure{status: http.StatusBadRequest, reason: metrics.ConnectOther, err: fmt.Errorf("authorisation server: %s", echo(code))}
	f.page = page{Title: "Connection failed",
		Message: "Pleo did not grant access. Nothing was stored.",
		Details: []detail{{"Error", echo(code)}}}
	if code == "access_denied" {
		f.reason = metrics.ConnectAccessDenied
		f.page.Title = "Access denied"
		f.page.Message = "Access was not granted in Pleo, so nothing was connected or stored."
	}
	if description != "" {
		f.page.Details = append(f.page.Details, detail{"Description", echo(description)})
	}
	return f
}

// exchangeFailure is a code the token endpoint would not exchange.
func exchangeFailure(err error) *failure {
	f := &failure{status: http.StatusBadGateway, reason: metrics.ConnectExchangeFailed, err: err,
		page: page{Title: "Connection failed",
			Message: "Pleo's token endpoint could not be reached or failed. Nothing was stored; try again later."}}
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		// RetrieveError's text includes the response body: log the code only.
		f.err = fmt.Errorf("token endpoint answered %d %s", statusOf(re), echo(re.ErrorCode))
		if s := statusOf(re); s >= 400 && s < 500 {
			f.status = http.StatusBadRequest
			f.page.Message = "Pleo did not accept the authorisation. Nothing was stored; start again."
			if re.ErrorCode != "" {
				f.page.Details = []detail{{"Error", echo(re.ErrorCode)}}
			}
		}
	}
	return f
}

func statusOf(re *oauth2.RetrieveError) int {
	if re.Response == nil {
		return 0
	}
	return re.Response.StatusCode
}
