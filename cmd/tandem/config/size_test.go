package config

import (
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"512", 512},
		{"1", 1},
		{"512B", 512},
		{"64K", 64 << 10},
		{"64k", 64 << 10},
		{"64KiB", 64 << 10},
		{"100M", 100 << 20},
		{"100MiB", 100 << 20},
		{"10G", 10 << 30},
		{"10gib", 10 << 30},
		{"1T", 1 << 40},
		{"2TiB", 2 << 40},
		{"3P", 3 << 50},
		{" 4G ", 4 << 30},
		{"8191P", 8191 << 50},
	} {
		got, err := ParseSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestParseSizeErrors(t *testing.T) {
	for _, tc := range []struct {
		in, wantErr string
	}{
		{"", "want a whole number"},
		{"G", "want a whole number"},
		{"-1G", "want a whole number"},
		{"1.5G", "unknown unit"},
		{"10X", "unknown unit \"X\""},
		{"10KB", "unknown unit"},
		{"10 GB", "unknown unit"},
		{"0", "greater than zero"},
		{"0K", "greater than zero"},
		{"8192P", "too large"},
		{"99999999999999999999", "out of range"},
	} {
		_, err := ParseSize(tc.in)
		if err == nil {
			t.Errorf("ParseSize(%q) succeeded, want an error containing %q", tc.in, tc.wantErr)
			continue
		}
		if !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("ParseSize(%q) error %q, want it to contain %q", tc.in, err, tc.wantErr)
		}
	}
}
