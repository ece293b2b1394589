package config

import (
	"strings"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
)

// The parsers below read the new content of a secret file while the server runs (a rotated
// Kubernetes Secret), with the checks Parse applies at start-up. Their errors are *Errors
// naming the _FILE variable, and never quote the content.

// ParseOAuthClientSecretFile reads the content of PLEO_PROXY_OAUTH_CLIENT_SECRET_FILE.
func ParseOAuthClientSecretFile(data []byte) (credentials.Secret, error) {
	return parseSecretFile("OAUTH_CLIENT_SECRET", data)
}

// ParseAdminTokenFile reads the content of PLEO_PROXY_ADMIN_TOKEN_FILE.
func ParseAdminTokenFile(data []byte) (credentials.Secret, error) {
	s, err := parseSecretFile("ADMIN_TOKEN", data)
	if err == nil && !isVisibleASCII(s.Reveal()) {
		return "", fileProblem("ADMIN_TOKEN", "contains a space or a character that cannot appear in an HTTP header")
	}
	return s, err
}

// ParseClientTokensFile reads the content of PLEO_PROXY_CLIENT_TOKENS_FILE: tokens separated
// by commas or newlines, at least one.
func ParseClientTokensFile(data []byte) ([]credentials.Secret, error) {
	if _, err := parseSecretFile("CLIENT_TOKENS", data); err != nil {
		return nil, err
	}
	p := &parser{env: map[string]string{Prefix + "CLIENT_TOKENS": string(data)}}
	tokens := p.clientTokens("CLIENT_TOKENS")
	return tokens, p.asFileErrors("CLIENT_TOKENS")
}

// ParseEncryptionKeyFile reads the content of PLEO_PROXY_ENCRYPTION_KEY_FILE: base64 keys of
// EncryptionKeySize bytes separated by commas or newlines, newest first, at least one.
func ParseEncryptionKeyFile(data []byte) ([][]byte, error) {
	if _, err := parseSecretFile("ENCRYPTION_KEY", data); err != nil {
		return nil, err
	}
	p := &parser{env: map[string]string{Prefix + "ENCRYPTION_KEY": string(data)}}
	keys := p.encryptionKeys("ENCRYPTION_KEY")
	return keys, p.asFileErrors("ENCRYPTION_KEY")
}

// ParseConnectKeyFile reads the content of PLEO_PROXY_CONNECT_KEY_FILE: base64 keys of at
// least ConnectKeySize bytes separated by commas or newlines, newest first, at least one.
func ParseConnectKeyFile(data []byte) ([][]byte, error) {
	if _, err := parseSecretFile("CONNECT_KEY", data); err != nil {
		return nil, err
	}
	p := &parser{env: map[string]string{Prefix + "CONNECT_KEY": string(data)}}
	keys := p.connectKeys("CONNECT_KEY")
	return keys, p.asFileErrors("CONNECT_KEY")
}

// parseSecretFile trims trailing white space as Parse does, and refuses an empty file.
func parseSecretFile(name string, data []byte) (credentials.Secret, error) {
	s := strings.TrimRight(string(data), " \t\r\n")
	if strings.TrimSpace(s) == "" {
		return "", fileProblem(name, "the file is empty")
	}
	return credentials.Secret(s), nil
}

func fileProblem(name, msg string) error {
	return &Errors{{Variable: Prefix + name + "_FILE", Message: msg}}
}

// asFileErrors returns the problems found, blamed on PLEO_PROXY_<name>_FILE, or nil.
func (p *parser) asFileErrors(name string) error {
	if len(p.errs) == 0 {
		return nil
	}
	errs := make(Errors, len(p.errs))
	for i, e := range p.errs {
		if e.Variable == Prefix+name {
			e.Variable += "_FILE"
		}
		errs[i] = e
	}
	return &errs
}
