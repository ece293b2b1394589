// Command loadtool is the benchmark's helper (see bench/README.md). Its subcommands:
//
//	ports N                   print N free loopback TCP ports
//	wait -url U               poll U until it answers 200; print elapsed_ms (since -since-ns)
//	creds -n N -out F -ids F  write N fake oauth2 credentials (valid for -ttl) and their ids
//	touch -url U -ids F       send one request per company id, -c at a time
//	storm -url U -ids F       -per concurrent requests for every company, all released at once
//	fleet -urls U,U -ids F    constant-rate requests over many replicas and companies
//	vegstats -rate R          read vegeta's CSV results; latency percentiles from when due
//	h2stats -log F            read h2load's output and --log-file; counts and latency percentiles
//	report -in F              print the markdown report from the results file bench/run wrote
//
// Everything it contacts is a URL it is given; bench/run gives it loopback URLs only. Every
// loop is bounded by a count and a -timeout.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: loadtool ports|wait|creds|touch|storm|fleet|vegstats|h2stats|report [flags]")
		os.Exit(2)
	}
	var err error
	args := os.Args[2:]
	switch os.Args[1] {
	case "ports":
		err = ports(args)
	case "wait":
		err = wait(args)
	case "creds":
		err = creds(args)
	case "touch":
		err = touch(args)
	case "storm":
		err = storm(args)
	case "fleet":
		err = fleet(args)
	case "vegstats":
		err = vegstats(args)
	case "h2stats":
		err = h2stats(args)
	case "report":
		err = report(args)
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadtool:", err)
		os.Exit(1)
	}
}
