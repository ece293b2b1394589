package main

import (
	"errors"
	"log/slog"
	"math"
	"runtime/debug"
	"strconv"

	"github.com/KimMachineGun/automemlimit/memlimit"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/config"
)

// autoMemoryRatio is the share of the container's memory limit that PLEO_PROXY_MEMORY_LIMIT=auto
// gives the Go runtime: the rest is for what the runtime does not count (the binary's pages,
// kernel buffers) and for a burst the garbage collector is still catching up with.
const autoMemoryRatio = 0.9

// applyMemoryLimit sets the Go runtime's soft memory limit as ml asks and returns it
// (math.MaxInt64: none) and where it came from. A limit already in force, which only
// GOMEMLIMIT can have set this early, takes precedence; "auto" asks cgroupLimit for the
// container's limit (memlimit.FromCgroup in production) and keeps autoMemoryRatio of it.
func applyMemoryLimit(ml config.MemoryLimit, cgroupLimit func() (uint64, error), log *slog.Logger) (limit int64, source string) {
	if cur := debug.SetMemoryLimit(-1); cur != math.MaxInt64 {
		return cur, "GOMEMLIMIT"
	}
	switch {
	case ml.Bytes > 0:
		debug.SetMemoryLimit(ml.Bytes)
		return ml.Bytes, "PLEO_PROXY_MEMORY_LIMIT"
	case ml.Auto:
		n, err := cgroupLimit()
		switch {
		case err == nil && n > 0 && n < math.MaxInt64:
			limit = int64(float64(n) * autoMemoryRatio)
			debug.SetMemoryLimit(limit)
			return limit, "cgroup"
		case err != nil && !errors.Is(err, memlimit.ErrNoLimit) && !errors.Is(err, memlimit.ErrNoCgroup) &&
			!errors.Is(err, memlimit.ErrCgroupsNotSupported):
			log.Warn("could not read the container's memory limit; running without a soft memory limit", "error", err)
		}
	}
	return math.MaxInt64, "none"
}

// memoryLimitText is a limit for the start-up log line: whole MiB, or "none".
func memoryLimitText(limit int64) string {
	if limit == math.MaxInt64 {
		return "none"
	}
	return strconv.FormatInt(limit>>20, 10) + "MiB"
}
