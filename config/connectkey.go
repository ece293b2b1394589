package config

import (
	"encoding/base64"
	"fmt"
)

// ConnectKeySize is the least length in bytes of one decoded PLEO_PROXY_CONNECT_KEY.
const ConnectKeySize = 32

// connectKeys reads the comma- (or, in the file, newline-) separated base64 HMAC keys of
// signed connect links, each at least ConnectKeySize bytes once decoded.
func (p *parser) connectKeys(name string) [][]byte {
	for _, n := range []string{name, name + "_FILE"} {
		if p.setButEmpty(n) {
			// A forgotten secret must not silently fall back to a derived or no key.
			p.add(n, nil, "is set but empty; unset it to derive the key from %sENCRYPTION_KEY", Prefix)
			return nil
		}
	}
	text := p.secret(name)
	blame := name
	if p.env[Prefix+name] == "" {
		blame = name + "_FILE"
	}
	if text == "" {
		if p.env[Prefix+blame] != "" && !p.hasProblem(name) {
			p.add(blame, nil, "holds no key")
		}
		return nil
	}
	parts := splitList(text, ",\n")
	if len(parts) == 0 {
		p.add(blame, nil, "holds no key")
		return nil
	}
	keys := make([][]byte, 0, len(parts))
	for i, part := range parts {
		which := "the key"
		if len(parts) > 1 {
			which = fmt.Sprintf("key %d of %d", i+1, len(parts))
		}
		k, err := base64.StdEncoding.DecodeString(part)
		if err != nil {
			p.add(blame, nil, "%s is not standard base64 (make one with: openssl rand -base64 32)", which)
			continue
		}
		if len(k) < ConnectKeySize {
			p.add(blame, nil, "%s decodes to %d bytes, want at least %d (make one with: openssl rand -base64 32)", which, len(k), ConnectKeySize)
			continue
		}
		keys = append(keys, k)
	}
	if len(keys) != len(parts) {
		return nil
	}
	return keys
}
