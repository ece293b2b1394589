package main

// credentials migrate and credentials export: moving credentials between stores, and the
// plain JSON copy a backup or another tool needs. Restoring an old copy is dangerous: Pleo's
// refresh tokens rotate, a copy older than the last refresh holds spent ones, and presenting a
// spent refresh token makes Pleo revoke the whole grant (the company must reconnect). Both
// commands therefore compare last_refreshed_at with the target's records.

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/config"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
)

const (
	usageMigrate = "usage: credentials migrate [--env-file PATH] --from STORE --to STORE [--from-encryption-key-file PATH] " +
		"[--to-encryption-key-file PATH | --to-plain] [--merge [--force]]\n" +
		"  STORE is a store URL: file:///absolute/path, postgres://… or postgresql://…\n" +
		"  keys: each side uses PLEO_PROXY_ENCRYPTION_KEY (or _FILE) unless its --*-encryption-key-file names a file of keys\n" +
		"  (the same format: base64, newest first, comma or newline separated); --to-plain writes the target unencrypted"
	usageExport = "usage: credentials export --reveal-secrets [--env-file PATH]\n(prints every credential of the configured store, secrets included, as an import document)"
)

// migrateOptions is a parsed migrate command line.
type migrateOptions struct {
	from, to         string
	fromKeys, toKeys [][]byte // nil: unencrypted
	merge, force     bool
}

// migrate copies every credential from one store to another, all or nothing, and checks every
// record in the target afterwards.
func (c *credCmd) migrate(args []string) error {
	fs := c.flags("migrate")
	from := fs.String("from", "", "the store to read (a store URL)")
	to := fs.String("to", "", "the store to write (a store URL)")
	fromKeyFile := fs.String("from-encryption-key-file", "", "keys of the source (default: PLEO_PROXY_ENCRYPTION_KEY or _FILE)")
	toKeyFile := fs.String("to-encryption-key-file", "", "keys of the target, the first encrypts (default: PLEO_PROXY_ENCRYPTION_KEY or _FILE)")
	toPlain := fs.Bool("to-plain", false, "write the target unencrypted")
	merge := fs.Bool("merge", false, "add to a target that already holds credentials")
	force := fs.Bool("force", false, "with --merge, replace a target record even when it was refreshed more recently")
	if help, err := c.parse(fs, args, usageMigrate); help || err != nil {
		return err
	}
	switch {
	case fs.NArg() != 0:
		return usageError{fmt.Sprintf("migrate takes no arguments, got %q\n%s", fs.Args(), usageMigrate)}
	case *from == "" || *to == "":
		return usageError{"migrate: name both stores with --from and --to\n" + usageMigrate}
	case *from == *to:
		return usageError{"migrate: --from and --to name the same store"}
	case *force && !*merge:
		return usageError{"migrate: --force only applies with --merge"}
	case *toPlain && *toKeyFile != "":
		return usageError{"migrate: --to-plain and --to-encryption-key-file exclude each other"}
	}
	opts := migrateOptions{from: *from, to: *to, merge: *merge, force: *force}
	var err error
	if opts.fromKeys, err = c.migrateKeys(*fromKeyFile, "--from-encryption-key-file"); err != nil {
		return err
	}
	if !*toPlain {
		if opts.toKeys, err = c.migrateKeys(*toKeyFile, "--to-encryption-key-file"); err != nil {
			return err
		}
	}
	return runMigrate(c.ctx, opts, c.stdout, c.stderrW())
}

// migrateKeys reads the keys in path, or the configured PLEO_PROXY_ENCRYPTION_KEY (nil when
// none is set) when path is empty.
func (c *credCmd) migrateKeys(path, flag string) ([][]byte, error) {
	if path == "" {
		cfg, err := c.config()
		if err != nil {
			return nil, err
		}
		return cfg.EncryptionKeys, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	keys, err := config.ParseEncryptionKeyFile(data)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", flag, path, err)
	}
	return keys, nil
}

// sealerFor returns the Sealer of keys, or nil for none.
func sealerFor(keys [][]byte) (*credentials.Sealer, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	return credentials.NewSealer(keys)
}

// storeName is a store URL for messages, any password masked.
func storeName(url string) string { return (&config.Config{Store: url}).RedactedStore() }

// migrateTime cuts a time to the microsecond, the precision every store keeps (PostgreSQL's).
func migrateTime(t time.Time) time.Time { return t.Truncate(time.Microsecond) }

// runMigrate is credentials migrate once its command line is parsed. Nothing is written
// unless every source record was read and validated; the write is one PutAll (one
// transaction, or one atomic file write); then a fresh open of the target is compared, field
// by field, secrets included, with what was written.
func runMigrate(ctx context.Context, opts migrateOptions, stdout, stderr io.Writer) error {
	fromSealer, err := sealerFor(opts.fromKeys)
	if err != nil {
		return fmt.Errorf("migrate: source keys: %w", err)
	}
	toSealer, err := sealerFor(opts.toKeys)
	if err != nil {
		return fmt.Errorf("migrate: target keys: %w", err)
	}

	// Read and validate everything first. The source is read on purpose, so a plain file is
	// read even with a key.
	src, err := openCLIStore(ctx, opts.from, fromSealer, true)
	if err != nil {
		return fmt.Errorf("migrate: nothing written: source %s: %w", storeName(opts.from), err)
	}
	creds, err := src.List(ctx)
	src.Close()
	if err != nil {
		return fmt.Errorf("migrate: nothing written: reading %s: %w", storeName(opts.from), err)
	}
	if len(creds) == 0 {
		// A mistyped file path opens as an empty store: say so rather than copy nothing.
		return fmt.Errorf("migrate: nothing written: the source %s holds no credential (is the URL right?)", storeName(opts.from))
	}
	for i := range creds {
		creds[i].ExpiresAt = migrateTime(creds[i].ExpiresAt)
		creds[i].LastRefreshedAt = migrateTime(creds[i].LastRefreshedAt)
		creds[i].Version = 0
		if err := creds[i].Validate(); err != nil {
			return fmt.Errorf("migrate: nothing written: source record %d (company %s): %w", i, creds[i].CompanyID, err)
		}
	}

	dst, err := openCLIStore(ctx, opts.to, toSealer, true)
	if err != nil {
		return fmt.Errorf("migrate: nothing written: target %s: %w", storeName(opts.to), err)
	}
	existing, err := dst.List(ctx)
	if err != nil {
		dst.Close()
		return fmt.Errorf("migrate: nothing written: reading the target %s: %w", storeName(opts.to), err)
	}
	if len(existing) > 0 && !opts.merge {
		dst.Close()
		return fmt.Errorf("migrate: nothing written: the target %s already holds %d credential(s); "+
			"add --merge to add to them (a target record refreshed more recently than the source's is kept unless --force)",
			storeName(opts.to), len(existing))
	}
	write, skipped := newerWins(creds, existing, opts.force, stderr, "migrate")
	if len(write) > 0 {
		if err := dst.PutAll(ctx, write, false); err != nil {
			dst.Close()
			return fmt.Errorf("migrate: nothing written: %w", err)
		}
	}
	dst.Close()

	// Verify through a new instance: what a server opening the target would read.
	if err := verifyMigrated(ctx, opts.to, toSealer, write); err != nil {
		return err
	}
	encrypted := "unencrypted"
	if toSealer != nil {
		encrypted = "encrypted with key " + toSealer.KeyID()
	}
	fmt.Fprintf(stdout, "migrated %d credential(s) from %s to %s (%s); every record verified\n",
		len(write), storeName(opts.from), storeName(opts.to), encrypted)
	if skipped > 0 {
		fmt.Fprintf(stdout, "kept %d newer target record(s) (see the warnings; --force replaces them)\n", skipped)
	}
	return nil
}

// newerWins returns the records of creds to write over existing, warning (on w) about every
// one last refreshed before the record of the same company in existing: its refresh token
// is likely spent, and presenting a spent refresh token makes Pleo revoke the grant. Unless
// force, those are left out (and counted in skipped).
func newerWins(creds, existing []credentials.Credential, force bool, w io.Writer, cmd string) (write []credentials.Credential, skipped int) {
	byCompany := make(map[string]credentials.Credential, len(existing))
	for _, e := range existing {
		byCompany[e.CompanyID] = e
	}
	for _, c := range creds {
		cur, ok := byCompany[credentials.CanonicalCompanyID(c.CompanyID)]
		if ok && !c.LastRefreshedAt.IsZero() && !cur.LastRefreshedAt.IsZero() && c.LastRefreshedAt.Before(cur.LastRefreshedAt) {
			action := "kept the target's record"
			if force {
				action = "replacing it (--force)"
			}
			fmt.Fprintf(w, "warning: %s: company %s: the record to write was last refreshed at %s, the stored one at %s: "+
				"its refresh token is likely spent, and presenting a spent refresh token makes Pleo revoke the grant; %s\n",
				cmd, c.CompanyID, c.LastRefreshedAt.UTC().Format(time.RFC3339), cur.LastRefreshedAt.UTC().Format(time.RFC3339), action)
			if !force {
				skipped++
				continue
			}
		}
		write = append(write, c)
	}
	return write, skipped
}

// verifyMigrated opens the target afresh and compares every written record, field by field
// (secrets in memory only), with what was written.
func verifyMigrated(ctx context.Context, url string, sealer *credentials.Sealer, written []credentials.Credential) error {
	dst, err := openCLIStore(ctx, url, sealer, false)
	if err != nil {
		return fmt.Errorf("migrate: written, but the target cannot be read back: %w", err)
	}
	defer dst.Close()
	for _, want := range written {
		got, err := dst.Get(ctx, credentials.CanonicalCompanyID(want.CompanyID))
		if err != nil {
			return fmt.Errorf("migrate: written, but company %s cannot be read back: %w", want.CompanyID, err)
		}
		if field := differingField(got, want); field != "" {
			return fmt.Errorf("migrate: written, but company %s reads back with a different %s", want.CompanyID, field)
		}
	}
	return nil
}

// differingField names the first field in which a and b differ (Version aside), or "".
func differingField(a, b credentials.Credential) string {
	checks := []struct {
		name string
		same bool
	}{
		{"company_id", credentials.CanonicalCompanyID(a.CompanyID) == credentials.CanonicalCompanyID(b.CompanyID)},
		{"tenant_id", a.TenantID == b.TenantID},
		{"type", a.Type == b.Type},
		{"access_token", a.AccessToken == b.AccessToken},
		{"refresh_token", a.RefreshToken == b.RefreshToken},
		{"api_key", a.APIKey == b.APIKey},
		{"expires_at", a.ExpiresAt.Equal(b.ExpiresAt)},
		{"state", a.State == b.State || a.State == "" && b.State == credentials.StateActive || b.State == "" && a.State == credentials.StateActive},
		{"last_refreshed_at", a.LastRefreshedAt.Equal(b.LastRefreshedAt)},
		{"last_error", a.LastError == b.LastError},
	}
	if i := slices.IndexFunc(checks, func(c struct {
		name string
		same bool
	}) bool {
		return !c.same
	}); i >= 0 {
		return checks[i].name
	}
	return ""
}

// export prints every credential of the configured store, secrets in the clear, as an import
// document, only when asked to with --reveal-secrets.
func (c *credCmd) export(args []string) error {
	fs := c.flags("export")
	reveal := fs.Bool("reveal-secrets", false, "print the secrets (refresh tokens, API keys) in the clear")
	if help, err := c.parse(fs, args, usageExport); help || err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageError{usageExport}
	}
	if !*reveal {
		return usageError{"export: refusing to print secrets without --reveal-secrets.\n" +
			"The output holds every company's refresh token and API key in the clear: whoever reads it can act as each company at Pleo. " +
			"Refresh tokens also rotate: once the proxy refreshes, the copy's are spent, and restoring it later makes Pleo revoke " +
			"those grants when the proxy presents them. To move credentials between stores use credentials migrate (nothing in the clear); " +
			"to take a backup anyway, redirect to a file only you can read: (umask 077; pleo-auth-proxy credentials export --reveal-secrets > backup.json)"}
	}
	store, err := c.open()
	if err != nil {
		return err
	}
	defer store.Close()
	list, err := store.List(c.ctx)
	if err != nil {
		return err
	}
	for i := range list {
		list[i].Version = 0 // a store's revision means nothing to another store
	}
	data, err := credentials.Marshal(list)
	if err != nil {
		return err
	}
	if _, err := c.stdout.Write(data); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	return nil
}
