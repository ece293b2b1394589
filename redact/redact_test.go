package redact_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/redact"
)

func TestScrub(t *testing.T) {
	set := redact.NewSet(100)
	set.Add("ory_at_abcdefgh12345", "rt-secret-value-1")
	set.AddPermanent("client-secret-xyz")
	basic := base64.StdEncoding.EncodeToString([]byte("rt-secret-value-1:"))
	cases := []struct{ name, in, want string }{
		{"plain", "token ory_at_abcdefgh12345 used", "token [REDACTED] used"},
		{"bearer header", "Authorization: Bearer ory_at_abcdefgh12345", "Authorization: Bearer [REDACTED]"},
		{"basic form", "Authorization: Basic " + basic, "Authorization: Basic [REDACTED]"},
		{"json", `{"refresh_token":"rt-secret-value-1","x":1}`, `{"refresh_token":"[REDACTED]","x":1}`},
		{"form body", "grant_type=refresh_token&refresh_token=rt-secret-value-1", "grant_type=refresh_token&[REDACTED]"},
		{"permanent", "secret client-secret-xyz!", "secret [REDACTED]!"},
		{"prefix of a longer token is kept", "ory_at_abcdefgh12345678", "ory_at_abcdefgh12345678"},
		{"nothing", "nothing to see here", "nothing to see here"},
		{"short", "abc", "abc"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := set.Scrub(tc.in); got != tc.want {
				t.Fatalf("Scrub(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

type stringer struct{ s string }

func (s stringer) String() string { return s.s }

func TestHandlerScrubsEveryPart(t *testing.T) {
	const secret = "api-key-0123456789"
	set := redact.NewSet(10)
	set.Add(secret)
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			var buf bytes.Buffer
			var inner slog.Handler = slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})
			if format == "json" {
				inner = slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})
			}
			log := slog.New(redact.NewHandler(inner, set)).With("pre", "with "+secret)
			log.Debug("message "+secret,
				"attr", secret,
				"err", fmt.Errorf("wrapped: %w", errors.New("upstream said "+secret)),
				"stringer", stringer{"x=" + secret},
				"any", []string{secret},
				slog.Group("g", "inner", secret),
				"basic", base64.StdEncoding.EncodeToString([]byte(secret+":")))
			log.WithGroup("grp").Info("again", "k", secret)
			out := buf.String()
			if strings.Contains(out, secret) || strings.Contains(out, base64.StdEncoding.EncodeToString([]byte(secret+":"))) {
				t.Fatalf("secret in output:\n%s", out)
			}
			if n := strings.Count(out, redact.Replacement); n < 9 {
				t.Fatalf("%d replacements, want at least 9:\n%s", n, out)
			}
		})
	}
}
