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
// Three limits apply: MaxRate (a token bucket, burst one chunk), and,
// while applications do I/O, a share of the capacity and a feedback rate.
// The capacity share: the controller keeps the highest total throughput
// (application plus resync) it measured in a window as the capacity
// estimate (decaying slowly, so it follows a slower disk), and caps
// resync at (1-AppShare) of it. That share is of bytes; but small random
// writes are worth far more than their bytes (a CPU-bound machine, a
// seeking disk), so the feedback rate watches what the applications get:
// it starts low when they become active, so their throughput with little
// resync beside it is seen (the peak, measured again by a short probe
// every few seconds), grows by a quarter per window while they keep a
// little more than AppShare of that peak, and halves in a window where
// they do not. When applications are idle resync
// runs at MaxRate.
type rateController struct {
	maxRate  float64 // bytes/s; 0 unlimited
	appShare float64

	winStart  time.Time
	winApp    int64
	winSync   int64
	lastApp   int64 // the application byte counter at the last Observe
	primed    bool  // lastApp holds a reading (the counter counts from the volume's start)
	appActive bool
	capacity  float64 // bytes/s
	appPeak   float64 // bytes/s, the applications' throughput with little resync beside them
	fbRate    float64 // bytes/s, the feedback limit (0: not started)
	// probe counts down the windows of a probe (the resync held low so
	// that appPeak is measured again); untilProbe counts up to the next.
	probe, untilProbe int
	probePeak         float64
	// starting: the first window, before the controller knows whether
	// applications are busy: the resync starts slowly rather than with a
	// burst the probe would measure them under.
	starting bool

	tokens float64
	last   time.Time
}

func newRateController(cfg ResyncConfig, now time.Time) *rateController {
	share := math.Min(math.Max(cfg.AppShare, 0), 1)
	return &rateController{maxRate: float64(cfg.MaxRate), appShare: share, winStart: now, last: now, starting: share > 0}
}

// limit is the current resync rate limit in bytes/s (+Inf: none).
func (c *rateController) limit() float64 {
	l := math.Inf(1)
	if c.maxRate > 0 {
		l = c.maxRate
	}
	if c.starting {
		return math.Min(l, startRate)
	}
	if c.appActive && c.appShare > 0 && c.capacity > 0 {
		switch {
		case c.probe > 0:
			l = math.Min(l, c.capacity*feedbackStart)
		case c.fbRate > 0:
			// What the applications get decides, not the bytes: their
			// small writes may be worth far more than the resync's.
			l = math.Min(l, c.fbRate)
		default:
			l = math.Min(l, c.capacity*math.Max(1-c.appShare, minResyncShare))
		}
	}
	return l
}

// startRate is the resync's rate in its first window.
const startRate = 64 << 20

// feedbackStart is where the feedback rate starts, its floor, and the
// resync's rate during a probe, as a share of the capacity.
const feedbackStart = 0.02

// A probe of probeWindows windows every probeEvery windows measures what
// the applications get with little resync beside them (their demand may
// have changed); the first window of a probe is not counted, as the
// queues of the resync before it drain.
const (
	probeWindows = 3
	probeEvery   = 30
)

// observe takes the application byte counter (cumulative) at now and
// closes measuring windows.
func (c *rateController) observe(now time.Time, appTotal int64) {
	// The first reading only sets the start: the counter holds all the
	// volume's application bytes so far, which taken for one window's
	// made the capacity (and every limit from it) absurd.
	if d := appTotal - c.lastApp; d > 0 && c.primed {
		c.winApp += d
	}
	c.primed = true
	c.lastApp = appTotal
	el := now.Sub(c.winStart)
	if el < rateWindow {
		return
	}
	secs := el.Seconds()
	total := float64(c.winApp+c.winSync) / secs
	app := float64(c.winApp) / secs
	c.capacity = math.Max(total, c.capacity*0.99)
	active := c.winApp > 0
	c.starting = false
	switch {
	case !active:
		c.fbRate, c.probe = 0, 0 // next time applications start, probe first
	case c.fbRate == 0 || !c.appActive:
		c.fbRate = c.capacity * feedbackStart
		c.probe, c.probePeak, c.untilProbe = probeWindows, 0, 0
	case c.probe > 0:
		if c.probe < probeWindows {
			c.probePeak = math.Max(c.probePeak, app)
		}
		if c.probe--; c.probe == 0 {
			c.appPeak = c.probePeak
		}
	default:
		// Aim a little above the share, so that its oscillation
		// around the aim stays above the share on average.
		if app < math.Min(c.appShare*1.2, 1)*c.appPeak {
			c.fbRate *= 0.5
		} else {
			c.fbRate *= 1.25
		}
		c.fbRate = math.Min(math.Max(c.fbRate, c.capacity*feedbackStart), c.capacity)
		if c.untilProbe++; c.untilProbe >= probeEvery {
			c.probe, c.probePeak, c.untilProbe = probeWindows, 0, 0
		}
	}
	c.appActive = active
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
