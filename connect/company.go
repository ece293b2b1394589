package connect

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/outbound"
)

// InstallationPath is the external API's path that names a credential's company.
const InstallationPath = "/v1/installations/me"

// companyURNPrefix prefixes the company id in the installation's resource.
const companyURNPrefix = "urn:pleo:company:"

// maxInstallationBytes bounds the installation document read.
const maxInstallationBytes = 64 << 10

// LookupError is a GET /v1/installations/me that did not name a company.
type LookupError struct {
	// Status is the HTTP status the upstream answered (0 when it was not reached).
	Status int
	// Reason says what was wrong, never including a secret.
	Reason string
	// Err is the underlying error, if any.
	Err error
}

func (e *LookupError) Error() string {
	return installationError("", e.Status, e.Reason, e.Err)
}

// installationError is the text of a failed call to InstallationPath: "connect: [method ]path
// [answered status][: reason][: err]", never with a secret.
func installationError(method string, status int, reason string, err error) string {
	msg := "connect: " + method + InstallationPath
	if status != 0 {
		msg += fmt.Sprintf(" answered %d", status)
	}
	if reason != "" {
		msg += ": " + reason
	}
	if err != nil {
		msg += ": " + err.Error()
	}
	return msg
}

func (e *LookupError) Unwrap() error { return e.Err }

// Unauthorized reports whether the upstream refused the credential (401 or 403).
func (e *LookupError) Unauthorized() bool {
	return e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden
}

// LookupCompany asks GET {upstream}/v1/installations/me which company a credential belongs
// to, sending authorization (a full Authorization header value: "Bearer …" or "Basic …"), and
// returns the canonical company id from its resource, urn:pleo:company:<uuid>. client should
// not follow redirects (a credential goes to the upstream only). Errors are *LookupError.
func LookupCompany(ctx context.Context, client *http.Client, upstream *url.URL, authorization credentials.Secret) (string, error) {
	if client == nil {
		client = noRedirectClient(nil, 30*time.Second)
	}
	u := *upstream
	u.Path = strings.TrimSuffix(u.Path, "/") + InstallationPath
	u.RawPath = ""
	u.RawQuery, u.Fragment = "", ""
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", &LookupError{Reason: "building the request", Err: err}
	}
	req.Header.Set("Authorization", authorization.Reveal())
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		// url.Error quotes the URL, which holds no secret here.
		return "", &LookupError{Reason: "request failed", Err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxInstallationBytes+1))
	if err != nil {
		return "", &LookupError{Status: resp.StatusCode, Reason: "reading the answer", Err: err}
	}
	if resp.StatusCode != http.StatusOK {
		return "", &LookupError{Status: resp.StatusCode, Reason: "not 200 OK"}
	}
	if len(body) > maxInstallationBytes {
		return "", &LookupError{Status: resp.StatusCode, Reason: "answer too large"}
	}
	var doc struct {
		Resource string `json:"resource"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return "", &LookupError{Status: resp.StatusCode, Reason: "answer is not JSON", Err: err}
	}
	id, ok := strings.CutPrefix(doc.Resource, companyURNPrefix)
	if !ok || !credentials.ValidCompanyID(id) {
		return "", &LookupError{Status: resp.StatusCode, Reason: "resource is not urn:pleo:company:<uuid>"}
	}
	return credentials.CanonicalCompanyID(id), nil
}

// noRedirectClient returns a client that never follows redirects, over transport (nil: the
// outbound policy's own transport, which ignores proxies from the environment).
func noRedirectClient(transport http.RoundTripper, timeout time.Duration) *http.Client {
	return outbound.NewClient(transport, timeout)
}
