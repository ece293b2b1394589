package credentials

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"golang.org/x/oauth2"
)

func TestTerminalRefreshError(t *testing.T) {
	retrieve := func(status int, code string) error {
		return fmt.Errorf("oauth2: %w", &oauth2.RetrieveError{Response: &http.Response{StatusCode: status}, ErrorCode: code})
	}
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"invalid_grant", retrieve(400, "invalid_grant"), true},
		{"other 4xx", retrieve(400, "invalid_request"), true},
		{"403 without code", retrieve(403, ""), true},
		{"invalid_client is our misconfiguration", retrieve(401, "invalid_client"), false},
		{"unauthorized_client is our misconfiguration", retrieve(400, "unauthorized_client"), false},
		{"408", retrieve(408, ""), false},
		{"429", retrieve(429, ""), false},
		{"503", retrieve(503, "temporarily_unavailable"), false},
		{"network", errors.New("dial tcp: connection refused"), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var re *oauth2.RetrieveError
			if got := terminalRefreshError(tc.err, &re); got != tc.want {
				t.Fatalf("terminal = %v, want %v", got, tc.want)
			}
		})
	}
}
