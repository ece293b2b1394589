package connect

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
)

// RevokeInstallation asks DELETE {upstream}/v1/installations/me, sending authorization (a full
// Authorization header value), which at Pleo revokes every token of the client for that
// installation. client should not follow redirects. It returns nil on a 2xx answer.
func RevokeInstallation(ctx context.Context, client *http.Client, upstream *url.URL, authorization credentials.Secret) error {
	if client == nil {
		client = noRedirectClient(nil, 30*time.Second)
	}
	u := *upstream
	u.Path = strings.TrimSuffix(u.Path, "/") + InstallationPath
	u.RawPath = ""
	u.RawQuery, u.Fragment = "", ""
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, u.String(), nil)
	if err != nil {
		return fmt.Errorf("connect: revoking: %w", err)
	}
	req.Header.Set("Authorization", authorization.Reveal())
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("connect: revoking: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxInstallationBytes))
	_ = resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("connect: DELETE %s answered %d", InstallationPath, resp.StatusCode)
	}
	return nil
}
