// Package redact keeps secrets out of logs by value: a slog.Handler wrapper that replaces any
// known secret — access and refresh tokens, API keys and their HTTP Basic form, the OAuth
// client secret, admin and client tokens, encryption keys — wherever it appears in a record
// (message, attribute values, error texts, groups) before the record is written. It is the
// second line of defence behind credentials.Secret, which redacts by type.
package redact

import (
	"context"
	"encoding/base64"
	"fmt"
	"hash/maphash"
	"log/slog"
	"strings"
	"sync"

	lru "github.com/hashicorp/golang-lru/v2"
)

// Replacement is written in place of a secret.
const Replacement = "[REDACTED]"

// minLen is the shortest value treated as a secret: shorter ones would redact ordinary words.
const minLen = 8

// Set is the set of secret values to redact. Permanent values (configuration) stay for the
// process's life; rotating ones (tokens) are kept in an LRU so the set stays bounded. It keeps
// a keyed 64-bit hash of each value (hash/maphash, a seed per process), not the value: the set
// holds no copy of a secret, costs a few dozen bytes per value whatever its length, and takes
// a run of log text that is no secret for one only on a hash collision (about 1 in 2^64 per
// run, which would redact a little too much, never too little).
type Set struct {
	seed      maphash.Seed
	mu        sync.RWMutex
	permanent map[uint64]struct{}
	rotating  *lru.Cache[uint64, struct{}]
}

// NewSet returns a Set that remembers up to capacity rotating values.
func NewSet(capacity int) *Set {
	if capacity <= 0 {
		capacity = 1 << 16
	}
	c, _ := lru.New[uint64, struct{}](capacity)
	return &Set{seed: maphash.MakeSeed(), permanent: make(map[uint64]struct{}), rotating: c}
}

func (s *Set) hash(v string) uint64 { return maphash.String(s.seed, v) }

// AddPermanent adds configuration secrets, and the forms they travel in.
func (s *Set) AddPermanent(values ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, v := range values {
		for _, f := range forms(v) {
			s.permanent[s.hash(f)] = struct{}{}
		}
	}
}

// Add adds rotating secrets (tokens, keys), and the forms they travel in.
func (s *Set) Add(values ...string) {
	if s == nil {
		return
	}
	for _, v := range values {
		for _, f := range forms(v) {
			s.rotating.Add(s.hash(f), struct{}{})
		}
	}
}

// forms is a value and its encodings that appear on the wire: the HTTP Basic credential
// base64("value:") an API key travels as, and plain base64 (with and without padding).
func forms(v string) []string {
	if len(v) < minLen {
		return nil
	}
	basic := base64.StdEncoding.EncodeToString([]byte(v + ":"))
	plain := base64.StdEncoding.EncodeToString([]byte(v))
	return []string{v, basic, strings.TrimRight(basic, "="), plain, strings.TrimRight(plain, "=")}
}

func (s *Set) has(tok string) bool {
	h := s.hash(tok)
	if _, ok := s.rotating.Peek(h); ok {
		return true
	}
	s.mu.RLock()
	_, ok := s.permanent[h]
	s.mu.RUnlock()
	return ok
}

// tokenChar reports whether c can be part of a secret (RFC 6750 b64token, base64, and the
// unreserved URL characters).
func tokenChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/' || c == '='
}

// Scrub returns text with every known secret replaced. A secret is found when it forms a
// whole run of token characters (trailing '=' padding ignored), which is how tokens appear in
// headers, JSON, form bodies and error messages.
func (s *Set) Scrub(text string) string {
	if s == nil || len(text) < minLen {
		return text
	}
	var b *strings.Builder
	last := 0
	for i := 0; i < len(text); {
		if !tokenChar(text[i]) {
			i++
			continue
		}
		j := i
		for j < len(text) && tokenChar(text[j]) {
			j++
		}
		if j-i >= minLen && s.matches(text[i:j]) {
			if b == nil {
				b = &strings.Builder{}
				b.Grow(len(text))
			}
			b.WriteString(text[last:i])
			b.WriteString(Replacement)
			last = j
		}
		i = j
	}
	if b == nil {
		return text
	}
	b.WriteString(text[last:])
	return b.String()
}

// matches checks a run, and the run without '=' padding or a key=value prefix ("refresh_token=…").
func (s *Set) matches(run string) bool {
	if s.has(run) {
		return true
	}
	if t := strings.TrimRight(run, "="); t != run && len(t) >= minLen && s.has(t) {
		return true
	}
	if k := strings.IndexByte(run, '='); k > 0 && k < len(run)-1 {
		return s.matches(run[k+1:])
	}
	return false
}

// Handler wraps another slog.Handler and scrubs every record.
type Handler struct {
	next slog.Handler
	set  *Set
}

// NewHandler returns a handler that scrubs records with set before passing them to next.
func NewHandler(next slog.Handler, set *Set) *Handler { return &Handler{next: next, set: set} }

// Enabled implements slog.Handler.
func (h *Handler) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

// Handle implements slog.Handler.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, h.set.Scrub(r.Message), r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(h.scrubAttr(a))
		return true
	})
	return h.next.Handle(ctx, out)
}

// WithAttrs implements slog.Handler.
func (h *Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	scrubbed := make([]slog.Attr, len(attrs))
	for i, a := range attrs {
		scrubbed[i] = h.scrubAttr(a)
	}
	return &Handler{next: h.next.WithAttrs(scrubbed), set: h.set}
}

// WithGroup implements slog.Handler.
func (h *Handler) WithGroup(name string) slog.Handler {
	return &Handler{next: h.next.WithGroup(name), set: h.set}
}

func (h *Handler) scrubAttr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, h.set.Scrub(v.String()))
	case slog.KindGroup:
		g := v.Group()
		out := make([]slog.Attr, len(g))
		for i, ga := range g {
			out[i] = h.scrubAttr(ga)
		}
		return slog.Attr{Key: a.Key, Value: slog.GroupValue(out...)}
	case slog.KindAny:
		// Errors, Stringers and anything else are rendered to text, then scrubbed.
		switch x := v.Any().(type) {
		case error:
			return slog.String(a.Key, h.set.Scrub(x.Error()))
		case fmt.Stringer:
			return slog.String(a.Key, h.set.Scrub(x.String()))
		default:
			return slog.String(a.Key, h.set.Scrub(fmt.Sprint(x)))
		}
	default:
		return slog.Attr{Key: a.Key, Value: v}
	}
}
