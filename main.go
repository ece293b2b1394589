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
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
)

// version is stamped at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	// The first SIGTERM or SIGINT cancels the context; later ones wait in sigs, where serve
	// finds them (laterSignals) to cut its shutdown delay short.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), laterSignalsKey{}, (<-chan os.Signal)(sigs)))
	go func() {
		<-sigs
		cancel()
	}()
	err := run(ctx, os.Args[1:], os.Environ(), os.Stdin, os.Stdout, os.Stderr)
	signal.Stop(sigs)
	cancel()
	if err != nil {
		var ue usageError
		if !errors.As(err, &ue) || ue.msg != "" {
			fmt.Fprintln(os.Stderr, "pleo-auth-proxy:", err)
		}
		os.Exit(exitCode(err))
	}
}

// laterSignalsKey is the context key of the channel of shutdown signals after the first.
type laterSignalsKey struct{}

// laterSignals returns the channel on which SIGTERM and SIGINT arrive after the first (which
// cancelled ctx), or nil (which never delivers) when the process set none up.
func laterSignals(ctx context.Context) <-chan os.Signal {
	ch, _ := ctx.Value(laterSignalsKey{}).(<-chan os.Signal)
	return ch
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

// command is one command or subcommand of the command line. Each is declared once, in
// commands() or in its group's list of subcommands; the top-level usage, every -h, --help
// and help answer, and the list of known names on a wrong one all come from these
// declarations, so a new command needs nothing but its entry.
type command struct {
	name string
	// usage is the "usage: ..." line(s) a leaf prints on -h (before its flags) and the
	// top-level usage lists; a group's is built from its subcommands.
	usage string
	// summary is what the command does, in a line.
	summary string
	// run runs a leaf with its arguments (the command's name removed). It parses them
	// with parseFlags, which answers -h and --help; dispatch turns a leading help into -h.
	// nil for a group.
	run func(ctx context.Context, inv invocation) error
	// subs are a group's subcommands.
	subs []*command
}

// invocation is what a command runs with. Configuration comes from environ, never from the
// process.
type invocation struct {
	args    []string
	environ []string
	stdin   io.Reader
	stdout  io.Writer
	stderr  io.Writer
}

// program is the command line's name in usage texts.
const program = "pleo-auth-proxy"

// commands declares the top-level commands, in the order the usage lists them.
func commands() []*command {
	return []*command{
		{name: "serve", usage: usageServe, summary: "run the sidecar (the default command)",
			run: func(ctx context.Context, inv invocation) error {
				return serve(ctx, inv.args, inv.environ, inv.stdout, inv.stderr)
			}},
		{name: "credentials", summary: "manage the stored credentials", subs: credentialsCommands()},
		{name: "connect-link", usage: usageConnectLink, summary: "print a signed consent link for a tenant, valid for --ttl (default 1h, at most 168h), on the host of PLEO_PROXY_OAUTH_REDIRECT_URL",
			run: func(_ context.Context, inv invocation) error {
				return connectLinkCommand(inv.args, inv.environ, inv.stdout, inv.stderr)
			}},
		{name: "healthcheck", usage: usageHealthcheck, summary: "exit 0 when the admin listener's /healthz answers 200 (for container health checks)",
			run: func(ctx context.Context, inv invocation) error {
				if help, err := noArgs(flag.NewFlagSet("healthcheck", flag.ContinueOnError), inv, usageHealthcheck); help || err != nil {
					return err
				}
				return healthcheck(ctx, inv.environ)
			}},
		{name: "version", usage: "usage: version", summary: "print the version",
			run: func(_ context.Context, inv invocation) error {
				if help, err := noArgs(flag.NewFlagSet("version", flag.ContinueOnError), inv, "usage: version"); help || err != nil {
					return err
				}
				fmt.Fprintln(inv.stdout, program, version)
				return nil
			}},
	}
}

// run dispatches a command line. Without a command, or with a flag first, it is serve's.
func run(ctx context.Context, args, environ []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") && !isHelp(args[0]) {
		args = append([]string{"serve"}, args...)
	}
	root := &command{name: program, subs: commands()}
	return root.dispatch(ctx, nil, invocation{args: args, environ: environ, stdin: stdin, stdout: stdout, stderr: stderr})
}

// isHelp reports whether arg asks for help.
func isHelp(arg string) bool {
	switch arg {
	case "help", "-h", "-help", "--help":
		return true
	}
	return false
}

// dispatch runs cmd, reached through path (the names before it, the program's excluded).
func (cmd *command) dispatch(ctx context.Context, path []string, inv invocation) error {
	if cmd.run != nil {
		if len(inv.args) > 0 && inv.args[0] == "help" {
			inv.args = append([]string{"-h"}, inv.args[1:]...)
		}
		return cmd.run(ctx, inv)
	}
	if cmd.name != program {
		path = append(path, cmd.name)
	}
	if len(inv.args) == 0 {
		return usageError{fmt.Sprintf("%s needs a subcommand: %s (see '%s --help')", strings.Join(path, " "), cmd.names(), cmd.helpCommand(path))}
	}
	name, rest := inv.args[0], inv.args[1:]
	if isHelp(name) {
		if name == "help" && len(rest) > 0 {
			// help CMD [SUB]: the usage of that command.
			inv.args = append(slices.Clone(rest), "-h")
			return cmd.dispatch(ctx, path[:max(len(path)-1, 0)], inv)
		}
		fmt.Fprint(inv.stdout, cmd.help(path))
		return nil
	}
	for _, sub := range cmd.subs {
		if sub.name == name {
			inv.args = rest
			return sub.dispatch(ctx, path, inv)
		}
	}
	what := "command"
	if len(path) > 0 {
		what = strings.Join(path, " ") + " subcommand"
	}
	return usageError{fmt.Sprintf("unknown %s %q (known: %s; see '%s --help')", what, name, cmd.names(), cmd.helpCommand(path))}
}

// names lists a group's subcommands: "a, b or c".
func (cmd *command) names() string {
	n := make([]string, len(cmd.subs))
	for i, sub := range cmd.subs {
		n[i] = sub.name
	}
	if len(n) < 2 {
		return strings.Join(n, "")
	}
	return strings.Join(n[:len(n)-1], ", ") + " or " + n[len(n)-1]
}

func (cmd *command) helpCommand(path []string) string {
	return strings.Join(append([]string{program}, path...), " ")
}

// help is a group's usage: every leaf under it with its usage line and summary.
func (cmd *command) help(path []string) string {
	var b strings.Builder
	if len(path) == 0 {
		fmt.Fprintf(&b, "usage: %s [command] [flags]\n\n%s\n\ncommands:\n", program,
			"An authenticating sidecar for Pleo integrations. Without a command, it runs serve.")
	} else {
		fmt.Fprintf(&b, "usage: %s SUBCOMMAND [flags]\n\n%s\n\nsubcommands:\n", strings.Join(path, " "), cmd.summary)
	}
	var list func(c *command)
	list = func(c *command) {
		if c.run == nil {
			for _, sub := range c.subs {
				list(sub)
			}
			return
		}
		line, _, _ := strings.Cut(c.usage, "\n")
		writeWrapped(&b, "  ", strings.TrimPrefix(line, "usage: "))
		writeWrapped(&b, "      ", c.summary)
	}
	list(cmd)
	word := "COMMAND"
	if len(path) > 0 {
		word = "SUBCOMMAND"
	}
	fmt.Fprintf(&b, "\nRun '%[1]s %[2]s -h' (or '%[1]s help %[2]s') for its usage and flags.\n", cmd.helpCommand(path), word)
	return b.String()
}

// writeWrapped writes text as lines of at most 100 columns, each starting with indent;
// continuation lines are indented four more columns.
func writeWrapped(b *strings.Builder, indent, text string) {
	const width = 100
	col := 0
	for i, word := range strings.Fields(text) {
		switch {
		case i == 0:
			b.WriteString(indent)
			col = len(indent)
		case col+1+len(word) > width:
			b.WriteString("\n" + indent + "    ")
			col = len(indent) + 4
		default:
			b.WriteByte(' ')
			col++
		}
		b.WriteString(word)
		col += len(word)
	}
	b.WriteByte('\n')
}

// parseFlags parses a leaf's arguments with fs. -h, -help and --help print usage and fs's
// flags on stdout and report help (the command then ends successfully); any other error is
// a usageError carrying usage.
func parseFlags(fs *flag.FlagSet, args []string, usage string, stdout io.Writer) (help bool, err error) {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stdout, usage)
			hasFlags := false
			fs.VisitAll(func(*flag.Flag) { hasFlags = true })
			if hasFlags {
				fmt.Fprintln(stdout, "\nflags:")
				fs.SetOutput(stdout)
				fs.PrintDefaults()
			}
			return true, nil
		}
		return false, usageError{err.Error() + "\n" + usage}
	}
	return false, nil
}

// noArgs parses a leaf that takes no arguments.
func noArgs(fs *flag.FlagSet, inv invocation, usage string) (help bool, err error) {
	if help, err := parseFlags(fs, inv.args, usage, inv.stdout); help || err != nil {
		return help, err
	}
	if fs.NArg() > 0 {
		return false, usageError{fmt.Sprintf("%s takes no arguments, got %q\n%s", fs.Name(), fs.Args(), usage)}
	}
	return false, nil
}
