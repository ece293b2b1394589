package connect

import (
	"net/http"
	"sync"
	"testing"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
)

// TestOnConnected: a completed flow tells OnConnected once, without a secret; a failed one
// does not.
func TestOnConnected(t *testing.T) {
	var mu sync.Mutex
	var told []credentials.Credential
	e := newEnv(t, func(o *Options) {
		o.OnConnected = func(c credentials.Credential) {
			mu.Lock()
			told = append(told, c)
			mu.Unlock()
		}
	})
	if r := get(t, newBrowser(t), e.connectURL("erp-tenant-9")); r.status != http.StatusOK {
		t.Fatalf("flow: %d %s", r.status, r.body)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(told) != 1 {
		t.Fatalf("OnConnected told %d times, want 1", len(told))
	}
	c := told[0]
	if c.CompanyID != companyA || c.TenantID != "erp-tenant-9" || c.Type != credentials.OAuth2 {
		t.Errorf("told %v", c)
	}
	if !c.AccessToken.IsZero() || !c.RefreshToken.IsZero() {
		t.Error("OnConnected was given the tokens")
	}
}
