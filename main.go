// Command pleo-auth-proxy is an authenticating sidecar for Pleo integrations: co-located
// services send it plain HTTP requests naming a company, and it forwards them to Pleo's
// external API with that company's credential, refreshing OAuth tokens as needed.
//
// main only wires packages together and handles signals; the work is in proxy/, credentials/,
// metrics/, admin/ and config/.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is stamped at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Environ(), os.Stdin, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		var ue usageError
		if !errors.As(err, &ue) || ue.msg != "" {
			fmt.Fprintln(os.Stderr, "pleo-auth-proxy:", err)
		}
		os.Exit(exitCode(err))
	}
}

// usageError is a bad command line: exit code 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// exitCode is 2 for usage errors and 1 for everything else.
func exitCode(err error) int {
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

const usage = `usage: pleo-auth-proxy [command]

commands:
  serve [--env-file PATH] [--dev]   run the sidecar (the default command)
  credentials import [--replace] FILE|-
  credentials list [--json]
  credentials delete COMPANY_ID     remove a credential from the store (nothing at Pleo)
  credentials disconnect (--company ID | --tenant T) [--force]
                                    revoke the installation at Pleo (DELETE /v1/installations/me),
                                    then remove the credential
  credentials put (--company ID | --discover-company) --type standalone_api_key|integrated_api_key
                  [--tenant T] [--expires-at RFC3339] [--key-file PATH]
                                    store one API key, read from --key-file or standard input
                                    (never the command line); --discover-company learns the
                                    company from GET {upstream}/v1/installations/me
  credentials rotate-key            re-seal every stored secret with the newest encryption key
  healthcheck                       exit 0 when the admin listener's /healthz answers 200
  version                           print the version
`

// run dispatches a command line. Configuration comes from environ, never from the process.
func run(ctx context.Context, args, environ []string, stdin io.Reader, stdout, stderr io.Writer) error {
	cmd, rest := "serve", args
	if len(args) > 0 && (len(args[0]) == 0 || args[0][0] != '-') {
		cmd, rest = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return serve(ctx, rest, environ, stdout, stderr)
	case "credentials":
		return credentialsCommand(ctx, rest, environ, stdin, stdout)
	case "healthcheck":
		return healthcheck(ctx, environ)
	case "version":
		fmt.Fprintln(stdout, "pleo-auth-proxy", version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return usageError{fmt.Sprintf("unknown command %q", cmd)}
	}
}
