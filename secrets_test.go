package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/config"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/redact"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/secretfile"
)

// A secret file's new value is redacted from logs before anything can use it, and the old
// value stays redacted.
func TestWatchSecretsRedactsReloadedValues(t *testing.T) {
	dir := t.TempDir()
	secretPath := filepath.Join(dir, "client-secret")
	if err := os.WriteFile(secretPath, []byte("first-client-secret-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(map[string]string{
		"PLEO_PROXY_OAUTH_CLIENT_ID":          "client",
		"PLEO_PROXY_OAUTH_CLIENT_SECRET_FILE": secretPath,
	})
	if err != nil {
		t.Fatal(err)
	}
	set := redact.NewSet(16)
	w := secretfile.NewWatcher(secretfile.Options{})
	live := watchSecrets(w, cfg, set)
	var seenRedacted bool
	live.clientSecret.OnChange(func(s credentials.Secret) {
		seenRedacted = !strings.Contains(set.Scrub("token call with "+s.Reveal()), s.Reveal())
	})
	if got := set.Scrub("x first-client-secret-value y"); strings.Contains(got, "first-client") {
		t.Fatalf("the start-up value is not redacted: %q", got)
	}
	tmp := secretPath + ".new"
	if err := os.WriteFile(tmp, []byte("second-client-secret-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, secretPath); err != nil {
		t.Fatal(err)
	}
	w.Check(false)
	if live.clientSecret.Load().Reveal() != "second-client-secret-value" || !seenRedacted {
		t.Fatalf("reloaded %v, redacted when in use: %v", live.clientSecret.Load().Reveal() == "second-client-secret-value", seenRedacted)
	}
	if got := set.Scrub("old first-client-secret-value new second-client-secret-value"); strings.Contains(got, "client-secret-value") {
		t.Fatalf("not redacted: %q", got)
	}
}
