package credentials

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestCredentialValidate(t *testing.T) {
	const company = "5a1c0b7e-8f0e-4c1d-9a55-2b7d3f1e4a10"
	apiKey := func(mod func(*Credential)) Credential {
		c := Credential{CompanyID: company, Type: StandaloneAPIKey, APIKey: Secret("key-1")}
		if mod != nil {
			mod(&c)
		}
		return c
	}
	oauth := func(mod func(*Credential)) Credential {
		c := Credential{CompanyID: company, Type: OAuth2, AccessToken: Secret("at"), RefreshToken: Secret("rt")}
		if mod != nil {
			mod(&c)
		}
		return c
	}
	beyond := time.Date(9999, 12, 31, 23, 59, 59, 0, time.FixedZone("west", -3600)) // 10000-01-01 in UTC
	tests := []struct {
		name  string
		c     Credential
		field string // "" means valid
	}{
		{"api key", apiKey(nil), ""},
		{"oauth2", oauth(nil), ""},
		{"oauth2 expiring in 9999", oauth(func(c *Credential) { c.ExpiresAt = time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC) }), ""},
		{"reauthorization required", oauth(func(c *Credential) { c.State = StateReauthorizationRequired }), ""},
		{"company not a UUID", apiKey(func(c *Credential) { c.CompanyID = "acme" }), "company_id"},
		{"tenant too long", apiKey(func(c *Credential) { c.TenantID = strings.Repeat("t", 257) }), "tenant_id"},
		{"no type", apiKey(func(c *Credential) { c.Type = "" }), "type"},
		{"unknown type", apiKey(func(c *Credential) { c.Type = "password" }), "type"},
		{"api key missing", apiKey(func(c *Credential) { c.APIKey = "" }), "api_key"},
		{"api key with tokens", apiKey(func(c *Credential) { c.RefreshToken = Secret("rt") }), "access_token"},
		{"oauth2 without refresh token", oauth(func(c *Credential) { c.RefreshToken = "" }), "refresh_token"},
		{"oauth2 with api key", oauth(func(c *Credential) { c.APIKey = Secret("k") }), "api_key"},
		{"unknown state", oauth(func(c *Credential) { c.State = "paused" }), "state"},
		{"secret with a newline", apiKey(func(c *Credential) { c.APIKey = Secret("a\nb") }), "secret"},
		{"expiry beyond year 9999 in UTC", apiKey(func(c *Credential) { c.ExpiresAt = beyond }), "expires_at"},
		{"last refresh before year 0", oauth(func(c *Credential) { c.LastRefreshedAt = time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC) }), "last_refreshed_at"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.c.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("Validate() = %v, want a *FieldError for %s", err, tt.field)
			}
			if fe.Field != tt.field {
				t.Fatalf("Validate() names field %q (%v), want %q", fe.Field, err, tt.field)
			}
		})
	}
}
