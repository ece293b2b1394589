package connect

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/oauthtest"
)

// TestDisconnectRevokesAtPleo disconnects a company whose grant the strict fosite server
// issued: the installation is revoked there (the old refresh token no longer works) and the
// credential is gone from the store.
func TestDisconnectRevokesAtPleo(t *testing.T) {
	ctx := context.Background()
	as := oauthtest.NewServer(t, oauthtest.Options{})
	tok, err := as.Grant(ctx, companyA)
	if err != nil {
		t.Fatal(err)
	}
	store := credentials.NewMemoryStore()
	cred := credentials.Credential{CompanyID: companyA, TenantID: "erp-1", Type: credentials.OAuth2,
		AccessToken: credentials.Secret(tok.AccessToken), RefreshToken: credentials.Secret(tok.RefreshToken), ExpiresAt: tok.Expiry}
	if err := store.PutAll(ctx, []credentials.Credential{cred}, false); err != nil {
		t.Fatal(err)
	}
	broker, err := credentials.NewBroker(credentials.BrokerOptions{Store: store,
		OAuth: credentials.OAuthClient{ClientID: as.ClientID(), ClientSecret: credentials.Secret(as.ClientSecret()), TokenURL: as.TokenURL()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(broker.Close)
	var told []credentials.Credential
	d := &Disconnector{Store: store, Grants: broker, Upstream: mustURL(t, as.URL()),
		OnDisconnected: func(c credentials.Credential) { told = append(told, c) }}

	got, err := d.Disconnect(ctx, companyA, false)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Revoked || got.Credential.TenantID != "erp-1" {
		t.Errorf("Disconnect = %+v, want revoked, tenant erp-1", got)
	}
	if _, err := store.Get(ctx, companyA); !errors.Is(err, credentials.ErrNotFound) {
		t.Errorf("store still has the credential: %v", err)
	}
	if len(told) != 1 || told[0].CompanyID != companyA {
		t.Errorf("OnDisconnected told %v, want the one credential", told)
	}
	// Revoked at Pleo: the refresh token the store held is refused.
	tok.Expiry = time.Now().Add(-time.Minute) // force a refresh
	if _, err := as.OAuth2Config().TokenSource(ctx, tok).Token(); err == nil {
		t.Error("refresh with the disconnected grant's refresh token succeeded; the installation was not revoked")
	}
	if _, err := d.Disconnect(ctx, companyA, false); !errors.Is(err, credentials.ErrNotFound) {
		t.Errorf("second disconnect: %v, want ErrNotFound", err)
	}
}

type fixedGrant struct{ g credentials.Grant }

func (f fixedGrant) Authorize(context.Context, string) (credentials.Grant, error) { return f.g, nil }

// TestDisconnectOutcomes covers what Pleo may answer, with a fixed grant and a scripted
// upstream: 204 and 404 count as revoked; anything else keeps the credential unless forced.
func TestDisconnectOutcomes(t *testing.T) {
	cases := []struct {
		name        string
		typ         credentials.Type
		status      int
		force       bool
		wantErr     bool
		wantKept    bool
		wantRevoked bool
		wantCalls   int32
	}{
		{"204 revoked", credentials.IntegratedAPIKey, http.StatusNoContent, false, false, false, true, 1},
		{"404 already gone", credentials.OAuth2, http.StatusNotFound, false, false, false, true, 1},
		{"500 keeps the credential", credentials.OAuth2, http.StatusInternalServerError, false, true, true, false, 1},
		{"401 keeps the credential", credentials.IntegratedAPIKey, http.StatusUnauthorized, false, true, true, false, 1},
		{"500 forced deletes", credentials.OAuth2, http.StatusInternalServerError, true, false, false, false, 1},
		{"standalone key is not revocable", credentials.StandaloneAPIKey, http.StatusNoContent, false, true, true, false, 0},
		{"standalone key forced", credentials.StandaloneAPIKey, http.StatusNoContent, true, false, false, false, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			var calls atomic.Int32
			var gotAuth, gotMethod, gotPath string
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				calls.Add(1)
				gotAuth, gotMethod, gotPath = r.Header.Get("Authorization"), r.Method, r.URL.Path
				w.WriteHeader(tc.status)
			}))
			t.Cleanup(up.Close)
			cred := credentials.Credential{CompanyID: companyB, Type: tc.typ}
			if tc.typ == credentials.OAuth2 {
				cred.AccessToken, cred.RefreshToken = "at-1", "rt-1"
			} else {
				cred.APIKey = "key-1"
			}
			store := credentials.NewMemoryStore()
			if err := store.PutAll(ctx, []credentials.Credential{cred}, false); err != nil {
				t.Fatal(err)
			}
			grant := credentials.NewGrant(cred)
			d := &Disconnector{Store: store, Grants: fixedGrant{grant}, Upstream: mustURL(t, up.URL)}
			got, err := d.Disconnect(ctx, companyB, tc.force)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %t", err, tc.wantErr)
			}
			if err != nil && !errors.Is(err, ErrNotRevoked) {
				t.Errorf("err = %v, want ErrNotRevoked", err)
			}
			if got.Revoked != tc.wantRevoked {
				t.Errorf("Revoked = %t, want %t (%v)", got.Revoked, tc.wantRevoked, got.RevokeErr)
			}
			_, gerr := store.Get(ctx, companyB)
			if kept := gerr == nil; kept != tc.wantKept {
				t.Errorf("kept = %t, want %t", kept, tc.wantKept)
			}
			if n := calls.Load(); n != tc.wantCalls {
				t.Fatalf("upstream calls = %d, want %d", n, tc.wantCalls)
			}
			if tc.wantCalls > 0 && (gotMethod != http.MethodDelete || gotPath != InstallationPath || gotAuth != grant.Authorization()) {
				t.Errorf("upstream got %s %s with the wrong authorization", gotMethod, gotPath)
			}
		})
	}
}
