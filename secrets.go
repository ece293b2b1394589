package main

import (
	"encoding/base64"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/config"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/metrics"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/redact"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/secretfile"
)

// liveSecrets are the configuration's secrets as the server uses them: each given as a file
// (PLEO_PROXY_*_FILE) is re-read when the file changes, so a rotated Kubernetes Secret takes
// effect without a restart; one given directly never changes. Consumers read the current
// value (Load) or are told of a new one (OnChange), never a copy taken at start-up.
//
// To make another secret file reloadable, add a field and one secretfile.Watch line (plus
// its redaction) in watchSecrets, and a label in package metrics.
type liveSecrets struct {
	clientSecret   *secretfile.Value[credentials.Secret]
	adminToken     *secretfile.Value[credentials.Secret]
	clientTokens   *secretfile.Value[[]credentials.Secret]
	encryptionKeys *secretfile.Value[[][]byte] // newest first; validated as NewSealer does
	connectKeys    *secretfile.Value[[][]byte] // PLEO_PROXY_CONNECT_KEY's, newest first (none: derived)
}

// watchSecrets registers cfg's secret files with w, and adds every secret's value, now and
// after each reload (before it is used), to the redaction set.
func watchSecrets(w *secretfile.Watcher, cfg *config.Config, set *redact.Set) *liveSecrets {
	s := &liveSecrets{
		clientSecret:   secretfile.Watch(w, metrics.SecretOAuthClientSecret, cfg.OAuthClientSecretFile, cfg.OAuthClientSecret, config.ParseOAuthClientSecretFile),
		adminToken:     secretfile.Watch(w, metrics.SecretAdminToken, cfg.AdminTokenFile, cfg.AdminToken, config.ParseAdminTokenFile),
		clientTokens:   secretfile.Watch(w, metrics.SecretClientTokens, cfg.ClientTokensFile, cfg.ClientTokens, config.ParseClientTokensFile),
		encryptionKeys: secretfile.Watch(w, metrics.SecretEncryptionKey, cfg.EncryptionKeyFile, cfg.EncryptionKeys, parseEncryptionKeyFile),
		connectKeys:    secretfile.Watch(w, metrics.SecretConnectKey, cfg.ConnectKeyFile, cfg.ConnectKeys, config.ParseConnectKeyFile),
	}
	redactAlways(s.clientSecret, set, revealSecret)
	redactAlways(s.adminToken, set, revealSecret)
	redactAlways(s.clientTokens, set, revealSecrets)
	redactAlways(s.encryptionKeys, set, revealKeys)
	redactAlways(s.connectKeys, set, revealKeys)
	return s
}

// parseEncryptionKeyFile parses a new PLEO_PROXY_ENCRYPTION_KEY_FILE and checks that the keys
// make a Sealer (no key twice).
func parseEncryptionKeyFile(data []byte) ([][]byte, error) {
	keys, err := config.ParseEncryptionKeyFile(data)
	if err != nil {
		return nil, err
	}
	if _, err := credentials.NewSealer(keys); err != nil {
		return nil, err
	}
	return keys, nil
}

// redactAlways adds v's value, and every value it is reloaded with (before it is in use), to
// set.
func redactAlways[T any](v *secretfile.Value[T], set *redact.Set, reveal func(T) []string) {
	set.AddPermanent(reveal(v.Load())...)
	v.BeforeChange(func(x T) { set.AddPermanent(reveal(x)...) })
}

func revealSecret(s credentials.Secret) []string { return []string{s.Reveal()} }

func revealSecrets(list []credentials.Secret) []string {
	out := make([]string, len(list))
	for i, s := range list {
		out[i] = s.Reveal()
	}
	return out
}

func revealKeys(keys [][]byte) []string {
	out := make([]string, 0, 2*len(keys))
	for _, k := range keys {
		out = append(out, base64.StdEncoding.EncodeToString(k), string(k))
	}
	return out
}
