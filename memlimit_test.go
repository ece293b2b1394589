package main

import (
	"errors"
	"log/slog"
	"math"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/KimMachineGun/automemlimit/memlimit"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/config"
)

func TestApplyMemoryLimit(t *testing.T) {
	const mib = 1 << 20
	cgroup := func(n uint64, err error) func() (uint64, error) {
		return func() (uint64, error) { return n, err }
	}
	for _, tc := range []struct {
		name       string
		inForce    int64 // a limit set before, as GOMEMLIMIT would; 0: none
		ml         config.MemoryLimit
		cgroup     func() (uint64, error)
		want       int64
		wantSource string
		wantLog    string
	}{
		{"auto in a container", 0, config.MemoryLimit{Auto: true}, cgroup(128*mib, nil), 128 * mib * 9 / 10, "cgroup", ""},
		{"auto without a limit", 0, config.MemoryLimit{Auto: true}, cgroup(0, memlimit.ErrNoLimit), math.MaxInt64, "none", ""},
		{"auto outside cgroups", 0, config.MemoryLimit{Auto: true}, cgroup(0, memlimit.ErrNoCgroup), math.MaxInt64, "none", ""},
		{"auto with an unreadable cgroup", 0, config.MemoryLimit{Auto: true}, cgroup(0, errors.New("permission denied")), math.MaxInt64, "none", "could not read the container's memory limit"},
		{"explicit", 0, config.MemoryLimit{Bytes: 56 * mib}, cgroup(128*mib, nil), 56 * mib, "PLEO_PROXY_MEMORY_LIMIT", ""},
		{"off", 0, config.MemoryLimit{}, cgroup(128*mib, nil), math.MaxInt64, "none", ""},
		{"GOMEMLIMIT wins over explicit", 40 * mib, config.MemoryLimit{Bytes: 56 * mib}, cgroup(128*mib, nil), 40 * mib, "GOMEMLIMIT", ""},
		{"GOMEMLIMIT wins over auto", 40 * mib, config.MemoryLimit{Auto: true}, cgroup(128*mib, nil), 40 * mib, "GOMEMLIMIT", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			orig := debug.SetMemoryLimit(-1)
			t.Cleanup(func() { debug.SetMemoryLimit(orig) })
			debug.SetMemoryLimit(math.MaxInt64)
			if tc.inForce > 0 {
				debug.SetMemoryLimit(tc.inForce)
			}
			var logs strings.Builder
			got, source := applyMemoryLimit(tc.ml, tc.cgroup, slog.New(slog.NewTextHandler(&logs, nil)))
			if got != tc.want || source != tc.wantSource {
				t.Errorf("applyMemoryLimit = %d, %q; want %d, %q", got, source, tc.want, tc.wantSource)
			}
			if now := debug.SetMemoryLimit(-1); now != tc.want {
				t.Errorf("runtime limit %d, want %d", now, tc.want)
			}
			if tc.wantLog == "" && logs.Len() > 0 || !strings.Contains(logs.String(), tc.wantLog) {
				t.Errorf("log %q, want %q", logs.String(), tc.wantLog)
			}
		})
	}
}

// TestMemoryLimitInBinary runs the built binary: the start-up line reports the limit in
// force and where it came from, and GOMEMLIMIT, read by the Go runtime itself, wins.
func TestMemoryLimitInBinary(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  []string
		want map[string]string
	}{
		{"explicit", []string{"PLEO_PROXY_MEMORY_LIMIT=56MiB"}, map[string]string{"memory_limit": "56MiB", "memory_limit_from": "PLEO_PROXY_MEMORY_LIMIT"}},
		{"GOMEMLIMIT wins", []string{"PLEO_PROXY_MEMORY_LIMIT=56MiB", "GOMEMLIMIT=40MiB"}, map[string]string{"memory_limit": "40MiB", "memory_limit_from": "GOMEMLIMIT"}},
		{"off", []string{"PLEO_PROXY_MEMORY_LIMIT=off"}, map[string]string{"memory_limit": "none", "memory_limit_from": "none"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			line := startDevSidecar(t, tc.env...)
			for k, v := range tc.want {
				if line[k] != v {
					t.Errorf("%s = %v, want %q", k, line[k], v)
				}
			}
		})
	}
}
