package config

import (
	"math"
	"strconv"
	"strings"
)

// MinMemoryLimit is the smallest explicit PLEO_PROXY_MEMORY_LIMIT: below it the Go runtime
// would spend its time collecting garbage it cannot free.
const MinMemoryLimit = 16 << 20

// MemoryLimit is the Go runtime's soft memory limit (runtime/debug.SetMemoryLimit), as
// PLEO_PROXY_MEMORY_LIMIT gives it: "auto" (90% of the container's cgroup memory limit, none
// outside a container), "off", or a size. GOMEMLIMIT, when set, takes precedence over it.
type MemoryLimit struct {
	// Auto derives the limit from the cgroup at start-up.
	Auto bool
	// Bytes is an explicit limit; zero with Auto false means no limit.
	Bytes int64
}

// String is "auto", "off" or the size in bytes with a binary unit, as GOMEMLIMIT writes it.
func (m MemoryLimit) String() string {
	switch {
	case m.Auto:
		return "auto"
	case m.Bytes == 0:
		return "off"
	}
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"GiB", 30}, {"MiB", 20}, {"KiB", 10}} {
		if m.Bytes%(1<<u.shift) == 0 {
			return strconv.FormatInt(m.Bytes>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(m.Bytes, 10) + "B"
}

// memoryUnits are the suffixes a size may carry: GOMEMLIMIT's (B, KiB, MiB, GiB) and
// Kubernetes' (Ki, Mi, Gi), both binary; a bare number is bytes.
var memoryUnits = []struct {
	suffix string
	shift  uint
}{
	{"GiB", 30}, {"MiB", 20}, {"KiB", 10}, {"Gi", 30}, {"Mi", 20}, {"Ki", 10}, {"B", 0},
}

// memoryLimit parses PLEO_PROXY_MEMORY_LIMIT.
func (p *parser) memoryLimit(name, value string) MemoryLimit {
	switch strings.ToLower(strings.TrimSpace(value)) {
	case "auto":
		return MemoryLimit{Auto: true}
	case "off":
		return MemoryLimit{}
	}
	digits, shift := value, uint(0)
	for _, u := range memoryUnits {
		if d, ok := strings.CutSuffix(value, u.suffix); ok {
			digits, shift = d, u.shift
			break
		}
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64>>shift {
		p.add(name, nil, "%q is not auto, off or a size such as 56MiB, 64Mi or 67108864", value)
		return MemoryLimit{}
	}
	if n <<= shift; n < MinMemoryLimit {
		p.add(name, nil, "%q is less than 16MiB; use off for no limit", value)
		return MemoryLimit{}
	}
	return MemoryLimit{Bytes: n}
}
