package main

import (
	"os"
	"strings"
	"testing"
)

// helpEnv is an environment with no configuration at all: help must not need any.
func helpEnv() []string { return []string{"PATH=" + os.Getenv("PATH")} }

// TestHelpEveryCommand: every declared command and subcommand answers -h, --help and help
// (and `help CMD...`) with its usage on stdout, exit 0 and nothing on stderr, through the
// built binary. The commands come from the declarations, so one added later is covered too.
func TestHelpEveryCommand(t *testing.T) {
	type leaf struct {
		path  []string
		usage string // the first line of its usage
	}
	var leaves, groups []leaf
	var walk func(path []string, cmds []*command)
	walk = func(path []string, cmds []*command) {
		for _, c := range cmds {
			p := append(append([]string(nil), path...), c.name)
			if c.run == nil {
				groups = append(groups, leaf{p, "usage: " + strings.Join(p, " ") + " SUBCOMMAND"})
				walk(p, c.subs)
				continue
			}
			first, _, _ := strings.Cut(c.usage, "\n")
			leaves = append(leaves, leaf{p, first})
		}
	}
	walk(nil, commands())
	if len(leaves) < 8 || len(groups) < 1 {
		t.Fatalf("found %d commands and %d groups; the declarations were not walked", len(leaves), len(groups))
	}
	for _, c := range append(leaves, groups...) {
		for _, args := range [][]string{
			append(append([]string(nil), c.path...), "-h"),
			append(append([]string(nil), c.path...), "--help"),
			append(append([]string(nil), c.path...), "help"),
			append([]string{"help"}, c.path...),
		} {
			t.Run(strings.Join(args, " "), func(t *testing.T) {
				t.Parallel()
				out, stderr, code := runCLI(t, helpEnv(), "", args...)
				if code != 0 || stderr != "" || !strings.HasPrefix(out, c.usage) {
					t.Errorf("exit %d, stdout %q, stderr %q; want exit 0, stdout starting %q, no stderr", code, out, stderr, c.usage)
				}
			})
		}
	}
}

// TestCommandLine: the top-level help, the default command, and the answers to wrong names,
// through the built binary.
func TestCommandLine(t *testing.T) {
	top := []string{"usage: pleo-auth-proxy [command]", "serve [--env-file PATH] [--dev]", "credentials import", "credentials put", "connect-link [--env-file PATH] --tenant T", "healthcheck", "version"}
	cases := []struct {
		name       string
		args       []string
		code       int
		stdout     []string // each in stdout
		stderr     []string // each in stderr; none: stderr must be empty
		notInStdio string   // in neither
	}{
		{"--help", []string{"--help"}, 0, top, nil, "Usage of serve"},
		{"-h", []string{"-h"}, 0, top, nil, "Usage of serve"},
		{"-help", []string{"-help"}, 0, top, nil, ""},
		{"help", []string{"help"}, 0, top, nil, ""},
		{"serve help lists its flags", []string{"serve", "--help"}, 0, []string{"usage: serve", "-env-file", "-dev", "PLEO_PROXY_"}, nil, "Usage of serve"},
		{"credentials help lists the subcommands", []string{"credentials", "help"}, 0,
			[]string{"credentials import", "credentials list", "credentials delete", "credentials put", "credentials rotate-key"}, nil, ""},
		{"help of a subcommand", []string{"help", "credentials", "list"}, 0, []string{"usage: credentials list", "-json"}, nil, ""},
		{"version", []string{"version"}, 0, []string{"pleo-auth-proxy "}, nil, ""},
		{"connect-link help lists its flags", []string{"connect-link", "-h"}, 0, []string{"usage: connect-link", "-tenant", "-ttl", "-env-file"}, nil, ""},
		{"help connect-link", []string{"help", "connect-link"}, 0, []string{"usage: connect-link"}, nil, ""},
		{"unknown command", []string{"frobnicate"}, 2, nil, []string{`unknown command "frobnicate"`, "serve, credentials, connect-link, healthcheck", "version"}, ""},
		{"help of an unknown command", []string{"help", "frobnicate"}, 2, nil, []string{`unknown command "frobnicate"`, "credentials"}, ""},
		{"unknown subcommand", []string{"credentials", "frob"}, 2, nil, []string{`unknown credentials subcommand "frob"`, "import, list, delete, ", "rotate-key"}, ""},
		{"no subcommand", []string{"credentials"}, 2, nil, []string{"needs a subcommand", "import, list"}, ""},
		{"unknown serve flag", []string{"serve", "--bogus"}, 2, nil, []string{"-bogus", "usage: serve"}, ""},
		{"unknown flag first: serve's", []string{"--bogus"}, 2, nil, []string{"-bogus", "usage: serve"}, ""},
		{"serve with an argument", []string{"serve", "now"}, 2, nil, []string{"takes no arguments", "usage: serve"}, ""},
		{"version with an argument", []string{"version", "now"}, 2, nil, []string{"takes no arguments"}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out, stderr, code := runCLI(t, helpEnv(), "", tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d; stdout %q stderr %q", code, tc.code, out, stderr)
			}
			for _, want := range tc.stdout {
				if !strings.Contains(out, want) {
					t.Errorf("stdout %q lacks %q", out, want)
				}
			}
			if len(tc.stderr) == 0 && stderr != "" {
				t.Errorf("stderr %q, want none", stderr)
			}
			for _, want := range tc.stderr {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr %q lacks %q", stderr, want)
				}
			}
			if tc.code != 0 && out != "" {
				t.Errorf("stdout %q on a failure, want none", out)
			}
			if tc.notInStdio != "" && strings.Contains(out+stderr, tc.notInStdio) {
				t.Errorf("output mentions %q:\n%s%s", tc.notInStdio, out, stderr)
			}
		})
	}
}
