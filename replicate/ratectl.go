package replicate

import (
	"math"
	"time"
)

// rateWindow is how long the controller measures before it adapts.
const rateWindow = 100 * time.Millisecond

// minResyncShare is the smallest share of the measured capacity a resync
// keeps while applications are busy, so that it always finishes.
const minResyncShare = 0.05

// rateController paces resync. It is a pure function of what it is told
// and of the times it is given (no clock of its own), so it is tested
// with a synthetic clock.
//
// Two limits apply: MaxRate (a token bucket, burst one chunk), and, while
// applications do I/O, a share of the capacity: the controller keeps the
// highest total throughput (application plus resync) it measured in a
// window as the capacity estimate (decaying slowly, so it follows a
// slower disk), and caps resync at (1-AppShare) of it while applications
// are active, leaving them at least AppShare. When applications are idle
// resync runs at MaxRate.
type rateController struct {
	maxRate  float64 // bytes/s; 0 unlimited
	appShare float64

	winStart  time.Time
	winApp    int64
	winSync   int64
	lastApp   int64 // the application byte counter at the last Observe
	appActive bool
	capacity  float64 // bytes/s

	tokens float64
	last   time.Time
}

func newRateController(cfg ResyncConfig, now time.Time) *rateController {
	share := math.Min(math.Max(cfg.AppShare, 0), 1)
	return &rateController{maxRate: float64(cfg.MaxRate), appShare: share, winStart: now, last: now}
}

// limit is the current resync rate limit in bytes/s (+Inf: none).
func (c *rateController) limit() float64 {
	l := math.Inf(1)
	if c.maxRate > 0 {
		l = c.maxRate
	}
	if c.appActive && c.appShare > 0 && c.capacity > 0 {
		l = math.Min(l, c.capacity*math.Max(1-c.appShare, minResyncShare))
	}
	return l
}

// observe takes the application byte counter (cumulative) at now and
// closes measuring windows.
func (c *rateController) observe(now time.Time, appTotal int64) {
	if d := appTotal - c.lastApp; d > 0 {
		c.winApp += d
	}
	c.lastApp = appTotal
	el := now.Sub(c.winStart)
	if el < rateWindow {
		return
	}
	secs := el.Seconds()
	total := float64(c.winApp+c.winSync) / secs
	c.capacity = math.Max(total, c.capacity*0.99)
	c.appActive = c.winApp > 0
	c.winStart, c.winApp, c.winSync = now, 0, 0
}

// refill adds the tokens earned since the last call, with a burst of
// one chunk of n bytes (or 10 ms worth, if larger).
func (c *rateController) refill(now time.Time, n int64, l float64) {
	if !math.IsInf(l, 1) {
		c.tokens = math.Min(c.tokens+now.Sub(c.last).Seconds()*l, math.Max(float64(n), l/100))
	}
	c.last = now
}

// delay says how long to wait before sending n more bytes at now; call
// sent once they go.
func (c *rateController) delay(now time.Time, n int64, appTotal int64) time.Duration {
	c.observe(now, appTotal)
	l := c.limit()
	c.refill(now, n, l)
	if math.IsInf(l, 1) || c.tokens >= float64(n) {
		return 0
	}
	return time.Duration((float64(n) - c.tokens) / l * float64(time.Second))
}

// sent records n resync bytes sent at now.
func (c *rateController) sent(now time.Time, n int64) {
	l := c.limit()
	c.refill(now, n, l)
	if !math.IsInf(l, 1) {
		c.tokens -= float64(n)
	}
	c.winSync += n
}
