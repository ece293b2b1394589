package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
)

// credentialsCommand runs `credentials import|list|delete` against the configured store.
func credentialsCommand(ctx context.Context, args, environ []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError{"credentials needs a subcommand: import, list or delete"}
	}
	sub, rest := args[0], args[1:]
	fs := flag.NewFlagSet("credentials "+sub, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	envFile := fs.String("env-file", "", "load a dotenv file first")
	replace := fs.Bool("replace", false, "import: replace the whole store")
	asJSON := fs.Bool("json", false, "list: print JSON")
	if err := fs.Parse(rest); err != nil {
		return usageError{err.Error()}
	}
	cfg, err := loadConfig(environ, *envFile, nil)
	if err != nil {
		return err
	}
	open := func() (credentials.Store, error) {
		return credentials.Open(cfg.Store, credentials.OpenOptions{PollInterval: time.Hour})
	}
	switch sub {
	case "import":
		if fs.NArg() != 1 {
			return usageError{"usage: credentials import [--replace] FILE|-"}
		}
		var in io.Reader = stdin
		if name := fs.Arg(0); name != "-" {
			f, err := os.Open(name)
			if err != nil {
				return fmt.Errorf("import: %w", err)
			}
			defer f.Close()
			in = f
		}
		creds, err := credentials.Parse(in)
		if err != nil {
			return fmt.Errorf("import: nothing written: %w", err)
		}
		store, err := open()
		if err != nil {
			return err
		}
		defer store.Close()
		if err := store.PutAll(ctx, creds, *replace); err != nil {
			return fmt.Errorf("import: nothing written: %w", err)
		}
		fmt.Fprintf(stdout, "imported %d credential(s)\n", len(creds))
		return nil
	case "list":
		store, err := open()
		if err != nil {
			return err
		}
		defer store.Close()
		list, err := store.List(ctx)
		if err != nil {
			return err
		}
		return printCredentials(stdout, list, *asJSON)
	case "delete":
		if fs.NArg() != 1 || !credentials.ValidCompanyID(fs.Arg(0)) {
			return usageError{"usage: credentials delete COMPANY_ID (a UUID)"}
		}
		store, err := open()
		if err != nil {
			return err
		}
		defer store.Close()
		id := credentials.CanonicalCompanyID(fs.Arg(0))
		if err := store.Delete(ctx, id); err != nil {
			if errors.Is(err, credentials.ErrNotFound) {
				return fmt.Errorf("delete: no credential for company %s", id)
			}
			return err
		}
		fmt.Fprintf(stdout, "deleted %s\n", id)
		return nil
	default:
		return usageError{fmt.Sprintf("unknown credentials subcommand %q (import, list, delete)", sub)}
	}
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
