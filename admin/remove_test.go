package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/admin"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
)

// fakeRemover records what DELETE /credentials asked for and answers as scripted.
type fakeRemover struct {
	calls     []string
	revokeErr error // the revocation's failure, if any
	err       error // the removal's error
}

func (f *fakeRemover) Delete(_ context.Context, id string) error {
	f.calls = append(f.calls, "delete "+id)
	return f.err
}

func (f *fakeRemover) Disconnect(_ context.Context, id string, force bool) (bool, error, error) {
	if force {
		f.calls = append(f.calls, "disconnect --force "+id)
	} else {
		f.calls = append(f.calls, "disconnect "+id)
	}
	if f.revokeErr != nil && !force {
		return false, f.revokeErr, errors.Join(errors.New("kept"), f.revokeErr)
	}
	return f.revokeErr == nil, f.revokeErr, f.err
}

func TestRemoveCredential(t *testing.T) {
	pleoDown := errors.New("DELETE /v1/installations/me answered 500")
	cases := []struct {
		name      string
		token     credentials.Secret
		auth      string
		path      string
		remover   fakeRemover
		status    int
		calls     string
		inBody    string
		notInBody string
	}{
		{name: "off without an admin token", path: "/credentials/" + oauthCompany + "?revoke=true", status: 404},
		{name: "needs the token", token: adminToken, auth: "Bearer wrong", path: "/credentials/" + oauthCompany + "?revoke=true", status: 401},
		{name: "not a UUID", token: adminToken, auth: "Bearer " + adminToken, path: "/credentials/nope?revoke=true", status: 400},
		{name: "revoke", token: adminToken, auth: "Bearer " + adminToken, path: "/credentials/" + strings.ToUpper(oauthCompany) + "?revoke=true",
			status: 200, calls: "disconnect " + oauthCompany, inBody: `"revoked":true`},
		{name: "revoke refused keeps", token: adminToken, auth: "Bearer " + adminToken, path: "/credentials/" + oauthCompany + "?revoke=true",
			remover: fakeRemover{revokeErr: pleoDown}, status: 502, calls: "disconnect " + oauthCompany, inBody: `"removed":false`},
		{name: "revoke refused, forced", token: adminToken, auth: "Bearer " + adminToken, path: "/credentials/" + oauthCompany + "?revoke=true&force=true",
			remover: fakeRemover{revokeErr: pleoDown}, status: 200, calls: "disconnect --force " + oauthCompany, inBody: `"revoked":false`},
		{name: "unknown company", token: adminToken, auth: "Bearer " + adminToken, path: "/credentials/" + keyCompany + "?revoke=true",
			remover: fakeRemover{err: credentials.ErrNotFound}, status: 404, calls: "disconnect " + keyCompany},
		{name: "local delete", token: adminToken, auth: "Bearer " + adminToken, path: "/credentials/" + keyCompany,
			status: 200, calls: "delete " + keyCompany, notInBody: "revoked"},
		{name: "store down", token: adminToken, auth: "Bearer " + adminToken, path: "/credentials/" + keyCompany,
			remover: fakeRemover{err: credentials.ErrStoreUnavailable}, status: 503, calls: "delete " + keyCompany},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rm := tc.remover
			srv := httptest.NewServer(admin.New(admin.Options{AdminToken: tc.token, Remover: &rm, Credentials: fixedStatus{}}))
			t.Cleanup(srv.Close)
			req, _ := http.NewRequest(http.MethodDelete, srv.URL+tc.path, nil)
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body map[string]any
			_ = json.NewDecoder(resp.Body).Decode(&body)
			raw, _ := json.Marshal(body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (%s)", resp.StatusCode, tc.status, raw)
			}
			if got := strings.Join(rm.calls, ";"); got != tc.calls {
				t.Errorf("calls %q, want %q", got, tc.calls)
			}
			if tc.inBody != "" && !strings.Contains(string(raw), tc.inBody) {
				t.Errorf("body %s, want %s", raw, tc.inBody)
			}
			if tc.notInBody != "" && strings.Contains(string(raw), tc.notInBody) {
				t.Errorf("body %s has %s", raw, tc.notInBody)
			}
		})
	}
}
