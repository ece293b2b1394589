package credentials

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"
)

// pgOpenTimeout bounds connecting to PostgreSQL and migrating its schema in Open.
const pgOpenTimeout = 30 * time.Second

// OpenOptions configures Open. The zero value is usable.
type OpenOptions struct {
	// PollInterval is how often a file store checks for changes made by others; zero means
	// DefaultPollInterval.
	PollInterval time.Duration
	// Logger receives the store's own messages; nil discards them.
	Logger *slog.Logger
	// Sealer, if set, encrypts the secrets the store writes and decrypts those it reads
	// (PLEO_PROXY_ENCRYPTION_KEY); nil stores them in the clear. The memory store ignores it.
	Sealer *Sealer
	// AllowPlain lets a file store with a Sealer read a plain file (see
	// FileStoreOptions.AllowPlain): for the operator's deliberate tools only.
	AllowPlain bool
	// OnReloadError, if set, is called on every failed attempt to reload a store's backing
	// file (for a metric); it must not block.
	OnReloadError func(error)
}

// Open opens the store a URL names (PLEO_PROXY_STORE):
//
//   - memory:// is an empty MemoryStore;
//   - file:///absolute/path/credentials.json is a FileStore (file://localhost/... too);
//   - postgres://… and postgresql://… are a PGStore (see OpenPGStore): the database must be
//     reachable, and its schema is migrated on the spot.
//
// Errors never repeat a password or query the URL may hold.
func Open(rawURL string, opts OpenOptions) (Store, error) {
	if rawURL == "" {
		return nil, errors.New("credentials: store URL is empty (want memory://, file:///absolute/path or postgres://)")
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error repeats the whole URL, password included
		}
		return nil, fmt.Errorf("credentials: store URL is not a valid URL: %w", err)
	}
	switch u.Scheme {
	case "memory":
		if u.Opaque != "" || u.Host != "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return nil, fmt.Errorf("credentials: store URL %q: memory:// takes no host, path or query", u.Redacted())
		}
		return NewMemoryStore(), nil
	case "file":
		if u.Opaque != "" || u.Host != "" && u.Host != "localhost" || u.User != nil {
			return nil, fmt.Errorf("credentials: store URL %q: a file URL names an absolute path, as in file:///var/lib/pleo-auth-proxy/credentials.json", u.Redacted())
		}
		if u.Path == "" || u.Path[0] != '/' {
			return nil, fmt.Errorf("credentials: store URL %q: the file path must be absolute", u.Redacted())
		}
		if u.RawQuery != "" || u.Fragment != "" {
			return nil, fmt.Errorf("credentials: store URL %q: a file URL takes no query or fragment", u.Redacted())
		}
		s, err := OpenFileStore(u.Path, FileStoreOptions{
			PollInterval:  opts.PollInterval,
			Logger:        opts.Logger,
			Sealer:        opts.Sealer,
			AllowPlain:    opts.AllowPlain,
			OnReloadError: opts.OnReloadError,
		})
		if err != nil {
			return nil, err
		}
		return s, nil
	case "postgres", "postgresql":
		ctx, cancel := context.WithTimeout(context.Background(), pgOpenTimeout)
		defer cancel()
		s, err := OpenPGStore(ctx, rawURL, PGStoreOptions{Logger: opts.Logger, Sealer: opts.Sealer})
		if err != nil {
			return nil, err // names neither the URL nor its password
		}
		return s, nil
	case "":
		return nil, errors.New("credentials: store URL has no scheme (want memory://, file:///absolute/path or postgres://)")
	default:
		return nil, fmt.Errorf("credentials: store URL: unknown scheme %q (want memory, file or postgres)", u.Scheme)
	}
}
