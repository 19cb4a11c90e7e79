package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// sizeUnits are binary multiples, as qemu-img and nbdkit use them: 1K = 1024.
// "KB" is refused rather than guessed, because it means 1000 to some readers.
var sizeUnits = map[string]int64{
	"":  1,
	"b": 1,
	"k": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gib": 1 << 30,
	"t": 1 << 40, "tib": 1 << 40,
	"p": 1 << 50, "pib": 1 << 50,
}

// ParseSize reads a byte count such as 512, 64K, 100M, 10GiB or 1T: the
// sizes of the configuration file and of command-line flags such as serve --size.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("size %q: want a whole number with an optional unit (512, 64K, 100M, 10G, 1T, 2GiB)", s)
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: %w", s, err)
	}
	suffix := strings.ToLower(strings.TrimSpace(t[i:]))
	mult, ok := sizeUnits[suffix]
	if !ok {
		return 0, fmt.Errorf("size %q: unknown unit %q (want K, M, G, T, P or KiB, MiB, GiB, TiB, PiB; all are powers of 1024)", s, t[i:])
	}
	if n <= 0 {
		return 0, fmt.Errorf("size %q: must be greater than zero", s)
	}
	if n > math.MaxInt64/mult {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	return n * mult, nil
}
