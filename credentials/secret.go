package credentials

import (
	"fmt"
	"log/slog"
)

// Redacted is what every printing path shows instead of a secret's value.
const Redacted = "[REDACTED]"

// Secret is a credential value: an access token, a refresh token or an API key. Every way of
// printing it (fmt verbs, slog, encoding/json) shows Redacted; Reveal is the only way to read
// it, and only the code that puts it on the wire or into a store calls it.
type Secret string

// Reveal returns the secret's value. Call it only to send or persist the secret.
func (s Secret) Reveal() string { return string(s) }

// IsZero reports whether the secret is empty.
func (s Secret) IsZero() bool { return s == "" }

// String redacts.
func (s Secret) String() string { return redactedOrEmpty(s) }

// GoString redacts, for %#v.
func (s Secret) GoString() string { return `credentials.Secret("` + redactedOrEmpty(s) + `")` }

// Format redacts for every verb, %d and %x included.
func (s Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(redactedOrEmpty(s))) }

// LogValue redacts for log/slog.
func (s Secret) LogValue() slog.Value { return slog.StringValue(redactedOrEmpty(s)) }

// MarshalJSON redacts; stores serialise secrets through their own record types.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + redactedOrEmpty(s) + `"`), nil }

// MarshalText redacts, so that encoders that prefer TextMarshaler cannot leak it either.
func (s Secret) MarshalText() ([]byte, error) { return []byte(redactedOrEmpty(s)), nil }

func redactedOrEmpty(s Secret) string {
	if s == "" {
		return ""
	}
	return Redacted
}
