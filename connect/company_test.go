package connect

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
)

func TestLookupCompany(t *testing.T) {
	const company = "5a1c0000-0000-4000-8000-00000000abcd"
	for _, c := range []struct {
		name    string
		status  int
		body    string
		prefix  string // upstream path prefix
		want    string
		wantErr string
		unauth  bool
	}{
		{name: "company", status: 200, body: `{"resource":"urn:pleo:company:` + company + `"}`, want: company},
		{name: "upper case id is canonicalised", status: 200, body: `{"resource":"urn:pleo:company:` + strings.ToUpper(company) + `"}`, want: company},
		{name: "extra fields", status: 200, body: `{"resource":"urn:pleo:company:` + company + `","company_id":"x"}`, want: company},
		{name: "upstream with a path", status: 200, prefix: "/pleo/", body: `{"resource":"urn:pleo:company:` + company + `"}`, want: company},
		{name: "organisation, not company", status: 200, body: `{"resource":"urn:pleo:organization:` + company + `"}`, wantErr: "resource is not"},
		{name: "not a uuid", status: 200, body: `{"resource":"urn:pleo:company:nope"}`, wantErr: "resource is not"},
		{name: "no resource", status: 200, body: `{}`, wantErr: "resource is not"},
		{name: "not json", status: 200, body: `<html>`, wantErr: "not JSON"},
		{name: "unauthorized", status: 401, body: `{"error":"invalid_token"}`, wantErr: "answered 401", unauth: true},
		{name: "forbidden", status: 403, body: `{}`, wantErr: "answered 403", unauth: true},
		{name: "server error", status: 500, body: `oops`, wantErr: "answered 500"},
		{name: "redirect is not followed", status: 302, body: ``, wantErr: "answered 302"},
		{name: "too large", status: 200, body: `{"resource":"` + strings.Repeat("x", maxInstallationBytes) + `"}`, wantErr: "too large"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var gotPath, gotAuth string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				gotPath, gotAuth = r.URL.Path, r.Header.Get("Authorization")
				if c.status == 302 {
					http.Redirect(w, r, "/elsewhere", http.StatusFound)
					return
				}
				w.WriteHeader(c.status)
				_, _ = w.Write([]byte(c.body))
			}))
			defer srv.Close()
			up, _ := url.Parse(srv.URL + c.prefix)
			auth := credentials.Secret(credentials.BasicAuthorization("the-key"))
			got, err := LookupCompany(context.Background(), nil, up, auth)
			if gotAuth != auth.Reveal() || gotPath != strings.TrimSuffix(c.prefix, "/")+InstallationPath {
				t.Fatalf("upstream saw %s with %q", gotPath, gotAuth)
			}
			if c.wantErr == "" {
				if err != nil || got != c.want {
					t.Fatalf("got %q, %v", got, err)
				}
				return
			}
			var le *LookupError
			if !errors.As(err, &le) || !strings.Contains(err.Error(), c.wantErr) || le.Unauthorized() != c.unauth {
				t.Fatalf("err %v, want %q", err, c.wantErr)
			}
			if strings.Contains(err.Error(), "the-key") {
				t.Fatal("the error shows the key")
			}
		})
	}
}
