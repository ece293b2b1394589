package config

import (
	"fmt"
)

// ConnectKeySize is the least length in bytes of one decoded PLEO_PROXY_CONNECT_KEY.
const ConnectKeySize = 32

// connectKeys reads the comma- (or, in the file, newline-) separated base64 HMAC keys of
// signed connect links, each at least ConnectKeySize bytes once decoded.
func (p *parser) connectKeys(name string) [][]byte {
	// A forgotten secret must not silently fall back to a derived or no key.
	return p.keyList(name, "unset it to derive the key from "+Prefix+"ENCRYPTION_KEY", func(k []byte) string {
		if len(k) < ConnectKeySize {
			return fmt.Sprintf("decodes to %d bytes, want at least %d", len(k), ConnectKeySize)
		}
		return ""
	})
}
