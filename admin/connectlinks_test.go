package admin_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/admin"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/connect"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
)

func newLinkServer(t *testing.T, token credentials.Secret, links *connect.Links) *httptest.Server {
	t.Helper()
	base, _ := url.Parse("https://connect.example.com/callback")
	opts := admin.Options{AdminToken: token}
	if links != nil {
		opts.ConnectLink = func(tenant string, ttl time.Duration) (string, time.Time, error) {
			return links.URL(base, tenant, ttl)
		}
	}
	srv := httptest.NewServer(admin.New(opts))
	t.Cleanup(srv.Close)
	return srv
}

func post(t *testing.T, u, auth, body string) (int, http.Header, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader(body))
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

func TestConnectLinksEndpoint(t *testing.T) {
	now := time.Now()
	links, err := connect.NewLinks([][]byte{bytes.Repeat([]byte{6}, 32)}, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	srv := newLinkServer(t, adminToken, links)
	bearer := "Bearer " + adminToken

	status, _, body := post(t, srv.URL+"/connect-links", bearer, `{"tenant_id": "erp-42", "ttl": "30m"}`)
	var got struct {
		URL       string    `json:"url"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	if status != http.StatusOK || json.Unmarshal([]byte(body), &got) != nil {
		t.Fatalf("%d %s", status, body)
	}
	u, err := url.Parse(got.URL)
	if err != nil || u.Host != "connect.example.com" || u.Path != connect.ConnectPath {
		t.Fatalf("url %s", got.URL)
	}
	if tenant, err := links.Verify(u.RawQuery); err != nil || tenant != "erp-42" {
		t.Fatalf("the link does not verify: %q %v", tenant, err)
	}
	if want := now.Add(30 * time.Minute).Truncate(time.Second); !got.ExpiresAt.Equal(want) {
		t.Fatalf("expires_at %v, want %v", got.ExpiresAt, want)
	}
	// Without a ttl: the default.
	_, _, body = post(t, srv.URL+"/connect-links", bearer, `{"tenant_id": "erp-42"}`)
	_ = json.Unmarshal([]byte(body), &got)
	if want := now.Add(connect.DefaultLinkTTL).Truncate(time.Second); !got.ExpiresAt.Equal(want) {
		t.Fatalf("default expires_at %v, want %v", got.ExpiresAt, want)
	}

	for _, tc := range []struct{ name, body, want string }{
		{"empty body", ``, "empty"},
		{"not JSON", `tenant_id=erp-42`, "malformed"},
		{"not an object", `["erp-42"]`, "tenant_id"},
		{"unknown field", `{"tenant_id": "t", "tenant": "u"}`, "unknown field"},
		{"two objects", `{"tenant_id": "t"}{"tenant_id": "u"}`, "one JSON object"},
		{"tenant missing", `{"ttl": "1h"}`, "empty"},
		{"tenant not a string", `{"tenant_id": 42}`, "string"},
		{"tenant with a control character", `{"tenant_id": "a\nb"}`, "control"},
		{"tenant too long", `{"tenant_id": "` + strings.Repeat("t", 257) + `"}`, "longer"},
		{"ttl not a duration", `{"tenant_id": "t", "ttl": "1 hour"}`, "not a duration"},
		{"ttl negative", `{"tenant_id": "t", "ttl": "-1h"}`, "not positive"},
		{"ttl too long", `{"tenant_id": "t", "ttl": "169h"}`, "longer than"},
		{"too large", `{"tenant_id": "t", "ttl": "1h", "x": "` + strings.Repeat("x", 9000) + `"}`, "malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, h, body := post(t, srv.URL+"/connect-links", bearer, tc.body)
			if status != http.StatusBadRequest || h.Get("Content-Type") != "application/problem+json" || !strings.Contains(body, tc.want) {
				t.Fatalf("%d %s %s", status, h.Get("Content-Type"), body)
			}
			var p map[string]any
			if json.Unmarshal([]byte(body), &p) != nil || p["status"] != float64(400) || p["title"] == "" {
				t.Fatalf("not a problem document: %s", body)
			}
		})
	}

	for _, auth := range []string{"", "Bearer wrong", "Basic " + adminToken} {
		if status, h, _ := post(t, srv.URL+"/connect-links", auth, `{"tenant_id": "t"}`); status != http.StatusUnauthorized || h.Get("WWW-Authenticate") == "" {
			t.Fatalf("auth %q: %d", auth, status)
		}
	}
	if status, _ := get(t, srv.URL+"/connect-links", bearer); status != http.StatusMethodNotAllowed {
		t.Fatalf("GET: %d", status)
	}
}

// Off without an admin token, and off without connect links (the connect listener off).
func TestConnectLinksEndpointOff(t *testing.T) {
	links, _ := connect.NewLinks([][]byte{bytes.Repeat([]byte{6}, 32)}, nil)
	for name, srv := range map[string]*httptest.Server{
		"no admin token":   newLinkServer(t, "", links),
		"no connect links": newLinkServer(t, adminToken, nil),
	} {
		if status, _, _ := post(t, srv.URL+"/connect-links", "Bearer "+adminToken, `{"tenant_id": "t"}`); status != http.StatusNotFound {
			t.Errorf("%s: %d", name, status)
		}
	}
}
