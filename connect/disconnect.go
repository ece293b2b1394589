package connect

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
)

// ErrNotRevoked means Pleo did not confirm the revocation; the credential was kept (unless
// the disconnect was forced).
var ErrNotRevoked = errors.New("connect: not revoked at Pleo")

// RevokeError is a DELETE /v1/installations/me that Pleo did not confirm.
type RevokeError struct {
	// Status is the HTTP status the upstream answered (0 when it was not reached).
	Status int
	// Reason says what was wrong, never including a secret.
	Reason string
	// Err is the underlying error, if any.
	Err error
}

func (e *RevokeError) Error() string {
	return installationError("DELETE ", e.Status, e.Reason, e.Err)
}

func (e *RevokeError) Unwrap() error { return e.Err }

// Is makes every RevokeError match ErrNotRevoked.
func (e *RevokeError) Is(target error) bool { return target == ErrNotRevoked }

// Revoke asks Pleo to end the installation a credential belongs to: DELETE
// {upstream}/v1/installations/me with authorization (a full Authorization header value), which
// revokes every token of the installation. 204 (revoked) and 404 (no such installation: already
// gone) both count as revoked; anything else is a *RevokeError. client should not follow
// redirects (a credential goes to the upstream only).
func Revoke(ctx context.Context, client *http.Client, upstream *url.URL, authorization credentials.Secret) error {
	if client == nil {
		client = noRedirectClient(nil, 30*time.Second)
	}
	u := *upstream
	u.Path = strings.TrimSuffix(u.Path, "/") + InstallationPath
	u.RawPath, u.RawQuery, u.Fragment = "", "", ""
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, u.String(), nil)
	if err != nil {
		return &RevokeError{Reason: "building the request", Err: err}
	}
	req.Header.Set("Authorization", authorization.Reveal())
	resp, err := client.Do(req)
	if err != nil {
		return &RevokeError{Reason: "request failed", Err: err}
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch resp.StatusCode {
	case http.StatusNoContent, http.StatusOK, http.StatusNotFound:
		return nil
	case http.StatusUnauthorized, http.StatusForbidden:
		return &RevokeError{Status: resp.StatusCode, Reason: "Pleo refused the credential"}
	default:
		return &RevokeError{Status: resp.StatusCode, Reason: "unexpected answer"}
	}
}

// GrantSource hands out a ready-to-send grant for a company, refreshing an OAuth token first
// when needed (a *credentials.Broker).
type GrantSource interface {
	Authorize(ctx context.Context, companyID string) (credentials.Grant, error)
}

// Disconnector revokes a company's installation at Pleo and then deletes its credential.
type Disconnector struct {
	// Store holds the credentials.
	Store credentials.Store
	// Grants gives the grant that authenticates the revocation.
	Grants GrantSource
	// Client calls the upstream; it must not follow redirects (default: such a client).
	Client *http.Client
	// Upstream is Pleo's external API.
	Upstream *url.URL
	// OnDisconnected, when set, is told about each credential deleted by Disconnect.
	OnDisconnected func(credentials.Credential)
}

// Disconnected is what Disconnect did.
type Disconnected struct {
	// Credential is the credential deleted (metadata only is read by callers).
	Credential credentials.Credential
	// Revoked is true when Pleo confirmed the revocation (or already had none).
	Revoked bool
	// RevokeErr is why the revocation was not confirmed, when Revoked is false.
	RevokeErr error
}

// Disconnect revokes the company's installation at Pleo with its own credential, then deletes
// the credential from the store. When Pleo does not confirm the revocation, the credential is
// kept and the error wraps ErrNotRevoked, unless force is set: then it is deleted anyway and
// Disconnected.Revoked is false (Pleo may still honour the grant). Standalone API keys belong
// to a person, not to an installation, and cannot be revoked this way: they need force.
// Errors wrap credentials.ErrNotFound when the store holds no credential for the company.
func (d *Disconnector) Disconnect(ctx context.Context, companyID string, force bool) (Disconnected, error) {
	cred, err := d.Store.Get(ctx, companyID)
	if err != nil {
		return Disconnected{}, fmt.Errorf("connect: disconnect %s: %w", companyID, err)
	}
	out := Disconnected{Credential: cred}
	out.RevokeErr = d.revoke(ctx, cred)
	out.Revoked = out.RevokeErr == nil
	if !out.Revoked && !force {
		return out, fmt.Errorf("connect: disconnect %s: credential kept: %w", companyID, out.RevokeErr)
	}
	if err := d.Store.Delete(ctx, companyID); err != nil && !errors.Is(err, credentials.ErrNotFound) {
		return out, fmt.Errorf("connect: disconnect %s: revoked=%t, but deleting the credential failed: %w", companyID, out.Revoked, err)
	}
	if d.OnDisconnected != nil {
		d.OnDisconnected(cred)
	}
	return out, nil
}

// revoke revokes the installation behind cred, or says why it cannot.
func (d *Disconnector) revoke(ctx context.Context, cred credentials.Credential) error {
	if cred.Type == credentials.StandaloneAPIKey {
		return &RevokeError{Reason: "a standalone API key belongs to the Pleo user who created it; revoke it in Pleo"}
	}
	grant, err := d.Grants.Authorize(ctx, cred.CompanyID)
	if err != nil {
		return &RevokeError{Reason: "no usable credential to authenticate the revocation", Err: err}
	}
	return Revoke(ctx, d.client(), d.Upstream, credentials.Secret(grant.Authorization()))
}

func (d *Disconnector) client() *http.Client {
	if d.Client != nil {
		return d.Client
	}
	return noRedirectClient(nil, 30*time.Second)
}
