package vip

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestCheckAddress(t *testing.T) {
	for _, c := range []struct {
		addr string
		bad  string // part of the error; "" for accepted
	}{
		{"198.51.100.100/24", ""},
		{"198.51.100.0/31", ""},
		{"198.51.100.255/32", ""},
		{"2001:db8::100/64", ""},
		{"2001:db8::/127", ""},
		{"198.51.100.0/24", "network address of 198.51.100.0/24"},
		{"198.51.100.255/24", "broadcast address of 198.51.100.0/24"},
		{"198.51.100.127/25", "broadcast address of 198.51.100.0/25"},
		{"2001:db8::/64", "subnet-router anycast"},
		{"0.0.0.0/0", "unspecified"},
		{"127.0.0.2/8", "loopback"},
		{"224.0.0.5/24", "multicast"},
		{"169.254.1.1/16", "link-local"},
		{"fe80::1/64", "link-local"},
		{"::ffff:198.51.100.100/120", "IPv4-mapped"},
		{"255.255.255.255/32", "broadcast address"},
	} {
		err := CheckAddress(netip.MustParsePrefix(c.addr))
		switch {
		case c.bad == "" && err != nil:
			t.Errorf("%s: refused: %v", c.addr, err)
		case c.bad != "" && (err == nil || !strings.Contains(err.Error(), c.bad)):
			t.Errorf("%s: got %v, want an error about %q", c.addr, err, c.bad)
		}
	}
	if err := CheckAddress(netip.Prefix{}); err == nil {
		t.Error("the zero prefix was accepted")
	}
}

func TestConfigCheck(t *testing.T) {
	good := Config{Address: netip.MustParsePrefix("198.51.100.100/24"), Interface: "eth0", Announce: DefaultAnnounce(), Probe: DefaultProbe()}
	if err := good.Check(); err != nil {
		t.Fatalf("defaults refused: %v", err)
	}
	noRepeat := good
	noRepeat.Announce.RepeatCount, noRepeat.Announce.RepeatAfter = 0, 0
	noProbe := good
	noProbe.Probe = Probe{}
	for _, c := range []Config{noRepeat, noProbe} {
		if err := c.Check(); err != nil {
			t.Errorf("%+v refused: %v", c, err)
		}
	}
	for name, mutate := range map[string]func(*Config){
		"no interface":        func(c *Config) { c.Interface = "" },
		"long interface":      func(c *Config) { c.Interface = "a-very-long-name0" },
		"slash in interface":  func(c *Config) { c.Interface = "eth/0" },
		"zero announce":       func(c *Config) { c.Announce.Count = 0 },
		"flood":               func(c *Config) { c.Announce.Count = MaxAnnounceCount + 1 },
		"negative interval":   func(c *Config) { c.Announce.Interval = -time.Millisecond },
		"repeat without wait": func(c *Config) { c.Announce.RepeatAfter = 0 },
		"negative probes":     func(c *Config) { c.Probe.Count = -1 },
		"probe too short":     func(c *Config) { c.Probe.Interval = time.Millisecond },
		"network address":     func(c *Config) { c.Address = netip.MustParsePrefix("198.51.100.0/24") },
	} {
		c := good
		mutate(&c)
		if err := c.Check(); !errors.Is(err, ErrBadConfig) {
			t.Errorf("%s: got %v, want ErrBadConfig", name, err)
		}
		if _, err := New(c); !errors.Is(err, ErrBadConfig) {
			t.Errorf("%s: New: got %v, want ErrBadConfig", name, err)
		}
	}
}
