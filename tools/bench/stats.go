package main

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// median of xs (mean of the two middle values for an even count); NaN-free
// input is assumed. The caller must not pass an empty slice.
func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// summary is the medians over the successful runs of one row and target.
type summary struct {
	N                  int // successful runs
	IOPS, BW, P50, P99 float64
	Cores              float64 // CPUs busy during the run (sample.Cores)
	// FioCores and ServerCores: medians of the samples' split, over the
	// samples that have one; ServerCores is nil if none has.
	FioCores    float64
	ServerCores []float64
	// Range of the row's main metric (IOPS or bandwidth) over the runs.
	Min, Max float64
}

func summarize(samples []sample, bandwidth bool) summary {
	if len(samples) == 0 {
		return summary{}
	}
	col := func(f func(sample) float64) []float64 {
		out := make([]float64, len(samples))
		for i, s := range samples {
			out[i] = f(s)
		}
		return out
	}
	main := col(func(s sample) float64 { return s.IOPS })
	if bandwidth {
		main = col(func(s sample) float64 { return s.BW })
	}
	var split []sample
	for _, s := range samples {
		if s.ServerCores != nil && (len(split) == 0 || len(s.ServerCores) == len(split[0].ServerCores)) {
			split = append(split, s)
		}
	}
	var fio float64
	var servers []float64
	if len(split) > 0 {
		fc := make([]float64, len(split))
		for i, s := range split {
			fc[i] = s.FioCores
		}
		fio = median(fc)
		for j := range split[0].ServerCores {
			for i, s := range split {
				fc[i] = s.ServerCores[j]
			}
			servers = append(servers, median(fc))
		}
	}
	return summary{
		FioCores:    fio,
		ServerCores: servers,
		N:           len(samples),
		IOPS:        median(col(func(s sample) float64 { return s.IOPS })),
		BW:          median(col(func(s sample) float64 { return s.BW })),
		P50:         median(col(func(s sample) float64 { return s.P50 })),
		P99:         median(col(func(s sample) float64 { return s.P99 })),
		Cores:       median(col(func(s sample) float64 { return s.Cores })),
		Min:         slices.Min(main),
		Max:         slices.Max(main),
	}
}

// parseSize reads sizes like "1G", "512M", "64MiB" or plain bytes (binary
// units).
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult != 1 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("bench: size %q: %w", s, err)
	}
	if v <= 0 {
		return 0, errors.New("bench: size must be positive")
	}
	return v * mult, nil
}
