package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/config"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/connect"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/events"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/outbound"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/proxy"
)

// Usage lines of the credentials subcommands.
const (
	usageImport     = "usage: credentials import [--env-file PATH] [--replace] [--from-encryption-key-file PATH] FILE|- (an encrypted store file is read with PLEO_PROXY_ENCRYPTION_KEY or the keys in --from-encryption-key-file)"
	usageList       = "usage: credentials list [--env-file PATH] [--json]"
	usageDelete     = "usage: credentials delete [--env-file PATH] COMPANY_ID\n(removes it from the store only: Pleo still honours the grant; see credentials disconnect)"
	usageDisconnect = "usage: credentials disconnect [--env-file PATH] (--company ID | --tenant T) [--force]\n(revokes the installation at Pleo with DELETE /v1/installations/me, then removes the credential; --force removes it even when Pleo does not confirm)"
	usagePut        = "usage: credentials put [--env-file PATH] (--company ID | --discover-company) --type standalone_api_key|integrated_api_key [--tenant T] [--expires-at RFC3339] [--key-file PATH]\n(the key comes from --key-file or standard input, never from the command line)"
	usageRotateKey  = "usage: credentials rotate-key [--env-file PATH]"
)

// maxKeyBytes bounds an API key read by put; maxImportBytes an import document.
const (
	maxKeyBytes    = 64 << 10
	maxImportBytes = 256 << 20
)

// credentialsCommands declares the credentials subcommands, which run against the
// configured store. A usageError (exit 2) is a bad command line; any other error exits 1.
func credentialsCommands() []*command {
	return []*command{
		credentialsCommand("import", usageImport, "import credentials from a file or standard input: all or nothing", (*credCmd).importCmd),
		credentialsCommand("list", usageList, "list the stored credentials (never a secret)", (*credCmd).list),
		credentialsCommand("delete", usageDelete, "remove a credential from the store (nothing at Pleo)", (*credCmd).delete),
		credentialsCommand("disconnect", usageDisconnect, "revoke the installation at Pleo (DELETE /v1/installations/me), then remove the credential", (*credCmd).disconnect),
		credentialsCommand("put", usagePut, "store one API key, read from --key-file or standard input (never the command line); "+
			"--discover-company learns the company from GET {upstream}/v1/installations/me", (*credCmd).put),
		credentialsCommand("rotate-key", usageRotateKey, "re-seal every stored secret with the newest encryption key", (*credCmd).rotateKey),
		credentialsCommand("migrate", usageMigrate, "copy every credential to another store, all or nothing, and check every record there", (*credCmd).migrate),
		credentialsCommand("export", usageExport, "print every credential, secrets in the clear, as an import document (needs --reveal-secrets)", (*credCmd).export),
	}
}

// credentialsCommand declares one credentials subcommand run by fn.
func credentialsCommand(name, usage, summary string, fn func(c *credCmd, args []string) error) *command {
	return &command{name: name, usage: usage, summary: summary, run: func(ctx context.Context, inv invocation) error {
		c := credCmd{ctx: ctx, environ: inv.environ, stdin: inv.stdin, stdout: inv.stdout, stderr: inv.stderr}
		return fn(&c, inv.args)
	}}
}

type credCmd struct {
	ctx     context.Context
	environ []string
	stdin   io.Reader
	stdout  io.Writer
	stderr  io.Writer // warnings; nil discards them
	envFile string
	cfg     *config.Config
}

// stderrW is where warnings go.
func (c *credCmd) stderrW() io.Writer {
	if c.stderr == nil {
		return io.Discard
	}
	return c.stderr
}

// flags returns a flag set with the common --env-file.
func (c *credCmd) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("credentials "+name, flag.ContinueOnError)
	fs.StringVar(&c.envFile, "env-file", "", "load a dotenv file first")
	return fs
}

// parse parses the command line; -h prints usage and ends the command successfully.
func (c *credCmd) parse(fs *flag.FlagSet, args []string, usage string) (help bool, err error) {
	return parseFlags(fs, args, usage, c.stdout)
}

// config loads the configuration (once).
func (c *credCmd) config() (*config.Config, error) {
	if c.cfg == nil {
		cfg, err := loadConfig(c.environ, c.envFile, nil)
		if err != nil {
			return nil, err
		}
		c.cfg = cfg
	}
	return c.cfg, nil
}

// open loads the configuration and opens the configured store, encrypted when a key is set.
// A plain credentials file with a key configured is refused (credentials.ErrPlaintextWithKey).
func (c *credCmd) open() (credentials.Store, error) {
	return c.openStore(false)
}

// openStore is open; allowPlain reads a plain file despite a key (rotate-key encrypts it).
func (c *credCmd) openStore(allowPlain bool) (credentials.Store, error) {
	cfg, err := c.config()
	if err != nil {
		return nil, err
	}
	sealer, err := newSealer(cfg)
	if err != nil {
		return nil, err
	}
	return openCLIStore(c.ctx, cfg.Store, sealer, allowPlain)
}

// openCLIStore opens a store for a command: unlike the server, which keeps running on a
// store that cannot be read (not ready), a command fails at once when Ping does.
func openCLIStore(ctx context.Context, url string, sealer *credentials.Sealer, allowPlain bool) (credentials.Store, error) {
	store, err := credentials.Open(url, credentials.OpenOptions{PollInterval: time.Hour, Sealer: sealer, AllowPlain: allowPlain})
	if err != nil {
		return nil, err
	}
	if err := store.Ping(ctx); err != nil {
		store.Close()
		return nil, err
	}
	return store, nil
}

// newSealer returns the Sealer for PLEO_PROXY_ENCRYPTION_KEY, or nil when no key is set.
func newSealer(cfg *config.Config) (*credentials.Sealer, error) {
	if len(cfg.EncryptionKeys) == 0 {
		return nil, nil
	}
	s, err := credentials.NewSealer(cfg.EncryptionKeys)
	if err != nil {
		return nil, fmt.Errorf("PLEO_PROXY_ENCRYPTION_KEY: %w", err)
	}
	return s, nil
}

func (c *credCmd) importCmd(args []string) error {
	fs := c.flags("import")
	replace := fs.Bool("replace", false, "replace the whole store")
	keyFile := fs.String("from-encryption-key-file", "", "keys of an encrypted document (default: PLEO_PROXY_ENCRYPTION_KEY or _FILE)")
	if help, err := c.parse(fs, args, usageImport); help || err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{usageImport}
	}
	var in io.Reader = c.stdin
	if name := fs.Arg(0); name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return fmt.Errorf("import: nothing written: %w", err)
		}
		defer f.Close()
		in = f
	}
	data, err := io.ReadAll(io.LimitReader(in, maxImportBytes+1))
	if err != nil {
		return fmt.Errorf("import: nothing written: %w", err)
	}
	if len(data) > maxImportBytes {
		return fmt.Errorf("import: nothing written: the document is larger than %d MiB", maxImportBytes>>20)
	}
	creds, err := credentials.Parse(bytes.NewReader(data))
	if err != nil {
		var peek struct {
			Encryption json.RawMessage `json:"encryption"`
		}
		if json.Unmarshal(data, &peek) != nil || peek.Encryption == nil {
			return fmt.Errorf("import: nothing written: %w", err)
		}
		// An encrypted store file (a copy of the file store): read it with its keys.
		keys, err := c.migrateKeys(*keyFile, "--from-encryption-key-file")
		if err != nil {
			return err
		}
		sealer, err := sealerFor(keys)
		if err != nil {
			return fmt.Errorf("import: nothing written: %w", err)
		}
		if creds, err = credentials.ParseFile(data, sealer); err != nil {
			return fmt.Errorf("import: nothing written: %w", err)
		}
	}
	store, err := c.open()
	if err != nil {
		return err
	}
	defer store.Close()
	existing, err := store.List(c.ctx)
	if err != nil {
		return fmt.Errorf("import: nothing written: %w", err)
	}
	// Import replaces the stored records (its contract); it warns about each older one.
	newerWins(creds, existing, true, c.stderrW(), "import")
	if err := store.PutAll(c.ctx, creds, *replace); err != nil {
		return fmt.Errorf("import: nothing written: %w", err)
	}
	fmt.Fprintf(c.stdout, "imported %d credential(s)\n", len(creds))
	return nil
}

func (c *credCmd) list(args []string) error {
	fs := c.flags("list")
	asJSON := fs.Bool("json", false, "print JSON")
	if help, err := c.parse(fs, args, usageList); help || err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageError{usageList}
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
	return printCredentials(c.stdout, list, *asJSON)
}

func (c *credCmd) delete(args []string) error {
	fs := c.flags("delete")
	if help, err := c.parse(fs, args, usageDelete); help || err != nil {
		return err
	}
	if fs.NArg() != 1 || !credentials.ValidCompanyID(fs.Arg(0)) {
		return usageError{usageDelete + " (a UUID)"}
	}
	store, err := c.open()
	if err != nil {
		return err
	}
	defer store.Close()
	id := credentials.CanonicalCompanyID(fs.Arg(0))
	if err := store.Delete(c.ctx, id); err != nil {
		if errors.Is(err, credentials.ErrNotFound) {
			return fmt.Errorf("delete: no credential for company %s", id)
		}
		return err
	}
	fmt.Fprintf(c.stdout, "deleted %s\n", id)
	return nil
}

// disconnect revokes a company's installation at Pleo, then removes its credential.
func (c *credCmd) disconnect(args []string) error {
	fs := c.flags("disconnect")
	company := fs.String("company", "", "the Pleo company id (a UUID)")
	tenant := fs.String("tenant", "", "the tenant id the company is connected to")
	force := fs.Bool("force", false, "remove the credential even when Pleo does not confirm the revocation")
	if help, err := c.parse(fs, args, usageDisconnect); help || err != nil {
		return err
	}
	switch {
	case fs.NArg() != 0:
		return usageError{usageDisconnect}
	case (*company == "") == (*tenant == ""):
		return usageError{"disconnect: name the company with --company ID or --tenant T (one of them)\n" + usageDisconnect}
	case *company != "" && !credentials.ValidCompanyID(*company):
		return usageError{"disconnect: --company must be a company id (a UUID)\n" + usageDisconnect}
	}
	cfg, err := c.config()
	if err != nil {
		return err
	}
	store, err := c.open()
	if err != nil {
		return err
	}
	defer store.Close()
	id := credentials.CanonicalCompanyID(*company)
	if *tenant != "" {
		cred, err := store.GetByTenant(c.ctx, *tenant)
		if err != nil {
			if errors.Is(err, credentials.ErrNotFound) {
				return fmt.Errorf("disconnect: no credential for tenant %q", *tenant)
			}
			return err
		}
		id = cred.CompanyID
	}
	transport := proxy.NewUpstreamTransport(cfg.UpstreamTimeout, cfg.UpstreamMaxConns)
	defer transport.CloseIdleConnections()
	client := outbound.NewClient(transport, cfg.UpstreamTimeout)
	broker, err := credentials.NewBroker(credentials.BrokerOptions{
		Store:         store,
		CacheSize:     16,
		OAuth:         credentials.OAuthClient{ClientID: cfg.OAuthClientID, ClientSecret: cfg.OAuthClientSecret, TokenURL: cfg.OAuthTokenURL.String()},
		HTTPClient:    client,
		RefreshBefore: cfg.RefreshBefore,
		TokenTimeout:  cfg.TokenTimeout,
	})
	if err != nil {
		return err
	}
	defer broker.Close()
	notifier, err := newNotifier(cfg, store, nil, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		return err
	}
	d := &connect.Disconnector{Store: store, Grants: broker, Client: client, Upstream: cfg.UpstreamURL,
		OnDisconnected: func(c credentials.Credential) { notifier.Notify(c, events.Disconnected) }}
	got, err := d.Disconnect(c.ctx, id, *force)
	defer func() {
		// Tell PLEO_PROXY_EVENTS_URL, briefly: the credential is gone whatever it answers.
		fctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
		defer cancel()
		if ferr := notifier.Flush(fctx); ferr != nil {
			fmt.Fprintf(c.stdout, "warning: the disconnected event was not delivered to PLEO_PROXY_EVENTS_URL: %v\n", ferr)
		}
	}()
	if err != nil {
		if errors.Is(err, credentials.ErrNotFound) {
			return fmt.Errorf("disconnect: no credential for company %s", id)
		}
		if errors.Is(err, connect.ErrNotRevoked) {
			return fmt.Errorf("disconnect: nothing removed: %w (fix the cause and run it again, or add --force to remove the credential anyway)", got.RevokeErr)
		}
		return fmt.Errorf("disconnect: %w", err)
	}
	if got.Revoked {
		fmt.Fprintf(c.stdout, "revoked at Pleo and removed company %s%s\n", id, tenantNote(got.Credential.TenantID))
		return nil
	}
	fmt.Fprintf(c.stdout, "removed company %s%s from the store, but Pleo did not confirm the revocation (%v): Pleo may still honour the grant until it is revoked in Pleo\n",
		id, tenantNote(got.Credential.TenantID), got.RevokeErr)
	return nil
}

// tenantNote is " (tenant T)", or nothing without a tenant.
func tenantNote(tenant string) string {
	if tenant == "" {
		return ""
	}
	return fmt.Sprintf(" (tenant %s)", tenant)
}

// put stores one API key credential. The key is never taken from the command line, where
// ps, /proc and shell history would show it.
func (c *credCmd) put(args []string) error {
	fs := c.flags("put")
	company := fs.String("company", "", "the Pleo company id (a UUID)")
	typ := fs.String("type", "", "standalone_api_key or integrated_api_key")
	tenant := fs.String("tenant", "", "the tenant id of the external system (optional)")
	expiresAt := fs.String("expires-at", "", "when the key expires, RFC 3339 (optional)")
	keyFile := fs.String("key-file", "", "read the key from this file instead of standard input")
	discover := fs.Bool("discover-company", false, "learn the company from GET {upstream}/v1/installations/me with the key")
	if help, err := c.parse(fs, args, usagePut); help || err != nil {
		return err
	}
	if fs.NArg() != 0 {
		// Never echo the arguments: they may be the key itself.
		return usageError{fmt.Sprintf("put takes no arguments (got %d): the key is read from --key-file or standard input, never from the command line\n%s", fs.NArg(), usagePut)}
	}
	switch {
	case *company == "" && !*discover:
		return usageError{"put: name the company with --company ID, or learn it from the key with --discover-company\n" + usagePut}
	case *company != "" && !credentials.ValidCompanyID(*company):
		return usageError{"put: --company must be a company id (a UUID)\n" + usagePut}
	}
	cred := credentials.Credential{
		CompanyID: credentials.CanonicalCompanyID(*company),
		TenantID:  *tenant,
		Type:      credentials.Type(*typ),
	}
	if !cred.Type.IsAPIKey() {
		msg := fmt.Sprintf("put: --type must be standalone_api_key or integrated_api_key, not %q", *typ)
		if cred.Type == credentials.OAuth2 {
			msg += " (OAuth credentials come from credentials import or the consent flow)"
		}
		return usageError{msg + "\n" + usagePut}
	}
	if *expiresAt != "" {
		t, err := time.Parse(time.RFC3339, *expiresAt)
		if err != nil {
			return usageError{fmt.Sprintf("put: --expires-at %q is not an RFC 3339 time such as 2027-01-01T00:00:00Z", *expiresAt)}
		}
		if !t.After(time.Now()) {
			return usageError{fmt.Sprintf("put: --expires-at %s is not in the future", *expiresAt)}
		}
		cred.ExpiresAt = t.UTC()
	}
	key, err := c.readKey(*keyFile)
	if err != nil {
		return err
	}
	cred.APIKey = credentials.Secret(key)
	if *discover {
		found, err := c.discoverCompany(cred.APIKey)
		if err != nil {
			return err
		}
		if cred.CompanyID != "" && cred.CompanyID != found {
			return fmt.Errorf("put: nothing written: the key belongs to company %s, not --company %s", found, cred.CompanyID)
		}
		cred.CompanyID = found
	}
	if err := cred.Validate(); err != nil {
		return fmt.Errorf("put: nothing written: %w", err)
	}
	store, err := c.open()
	if err != nil {
		return err
	}
	defer store.Close()
	if err := store.PutAll(c.ctx, []credentials.Credential{cred}, false); err != nil {
		return fmt.Errorf("put: nothing written: %w", err)
	}
	how := ""
	if *discover {
		how = " (learned from " + connect.InstallationPath + ")"
	}
	fmt.Fprintf(c.stdout, "stored a %s for company %s%s\n", cred.Type, cred.CompanyID, how)
	return nil
}

// discoverCompany asks the configured upstream which company the API key belongs to
// (GET /v1/installations/me, the key as HTTP Basic user name). The key goes to the upstream
// only: redirects are not followed.
func (c *credCmd) discoverCompany(key credentials.Secret) (string, error) {
	cfg, err := c.config()
	if err != nil {
		return "", err
	}
	client := outbound.NewClient(proxy.NewUpstreamTransport(cfg.UpstreamTimeout, cfg.UpstreamMaxConns), cfg.UpstreamTimeout)
	id, err := connect.LookupCompany(c.ctx, client, cfg.UpstreamURL, credentials.Secret(credentials.BasicAuthorization(key.Reveal())))
	if err != nil {
		var le *connect.LookupError
		if errors.As(err, &le) && le.Unauthorized() {
			return "", fmt.Errorf("put: nothing written: %s refused the key (%d); keys work only in the environment that issued them: check PLEO_PROXY_ENVIRONMENT or PLEO_PROXY_UPSTREAM_URL",
				cfg.UpstreamURL, le.Status)
		}
		return "", fmt.Errorf("put: nothing written: --discover-company: %w", err)
	}
	return id, nil
}

// readKey reads the API key from path, or from standard input when path is empty, trimming
// surrounding white space (a trailing newline, typically).
func (c *credCmd) readKey(path string) (string, error) {
	in, from := c.stdin, "standard input"
	if path != "" {
		f, err := os.Open(path)
		if err != nil {
			return "", fmt.Errorf("put: nothing written: --key-file: %w", err)
		}
		defer f.Close()
		in, from = f, path
	}
	if in == nil {
		in = strings.NewReader("")
	}
	data, err := io.ReadAll(io.LimitReader(in, maxKeyBytes+1))
	if err != nil {
		return "", fmt.Errorf("put: nothing written: reading the key from %s: %w", from, err)
	}
	if len(data) > maxKeyBytes {
		return "", fmt.Errorf("put: nothing written: %s holds more than %d KiB, not an API key", from, maxKeyBytes>>10)
	}
	key := strings.TrimSpace(string(data))
	if key == "" {
		return "", fmt.Errorf("put: nothing written: no key on %s (pipe it in, or name a file with --key-file)", from)
	}
	return key, nil
}

// rotateKey re-seals every stored secret with the newest PLEO_PROXY_ENCRYPTION_KEY.
func (c *credCmd) rotateKey(args []string) error {
	fs := c.flags("rotate-key")
	if help, err := c.parse(fs, args, usageRotateKey); help || err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageError{usageRotateKey}
	}
	cfg, err := c.config()
	if err != nil {
		return err
	}
	if len(cfg.EncryptionKeys) == 0 {
		return errors.New("rotate-key: no encryption key is configured: set PLEO_PROXY_ENCRYPTION_KEY (or _FILE) to NEW,OLD, newest first")
	}
	store, err := c.openStore(true) // a plain file is encrypted on purpose

	if err != nil {
		return err
	}
	defer store.Close()
	rotator, ok := store.(credentials.KeyRotator)
	if !ok {
		return fmt.Errorf("rotate-key: the store %s does not encrypt credentials", c.cfg.RedactedStore())
	}
	n, err := rotator.RotateKey(c.ctx)
	if err != nil {
		return fmt.Errorf("rotate-key: %w", err)
	}
	newest := credentials.KeyID(c.cfg.EncryptionKeys[0])
	fmt.Fprintf(c.stdout, "re-encrypted %d credential(s) with key %s\n", n, newest)
	if len(c.cfg.EncryptionKeys) > 1 {
		old := make([]string, 0, len(c.cfg.EncryptionKeys)-1)
		for _, k := range c.cfg.EncryptionKeys[1:] {
			old = append(old, credentials.KeyID(k))
		}
		fmt.Fprintf(c.stdout, "no stored value needs key %s any more; remove it from PLEO_PROXY_ENCRYPTION_KEY once every process uses key %s\n",
			strings.Join(old, ", "), newest)
	}
	return nil
}

// listed is what `credentials list` prints of one credential: never a secret.
type listed struct {
	CompanyID       string     `json:"company_id"`
	TenantID        string     `json:"tenant_id,omitempty"`
	Type            string     `json:"type"`
	State           string     `json:"state"`
	ExpiresAt       *time.Time `json:"expires_at,omitempty"`
	LastRefreshedAt *time.Time `json:"last_refreshed_at,omitempty"`
	LastError       string     `json:"last_error,omitempty"`
}

func printCredentials(w io.Writer, list []credentials.Credential, asJSON bool) error {
	out := make([]listed, 0, len(list))
	for _, c := range list {
		l := listed{CompanyID: c.CompanyID, TenantID: c.TenantID, Type: string(c.Type), State: string(c.State), LastError: c.LastError}
		if !c.ExpiresAt.IsZero() {
			t := c.ExpiresAt
			l.ExpiresAt = &t
		}
		if !c.LastRefreshedAt.IsZero() {
			t := c.LastRefreshedAt
			l.LastRefreshedAt = &t
		}
		out = append(out, l)
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"credentials": out})
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "COMPANY_ID\tTENANT_ID\tTYPE\tSTATE\tEXPIRES_AT")
	for _, l := range out {
		exp := "-"
		if l.ExpiresAt != nil {
			exp = l.ExpiresAt.Format(time.RFC3339)
		}
		tenant := l.TenantID
		if tenant == "" {
			tenant = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", l.CompanyID, tenant, l.Type, l.State, exp)
	}
	return tw.Flush()
}
