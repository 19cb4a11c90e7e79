//go:build race

package md

// raceOn: the race detector makes the crash workloads ~10x slower; they run
// fewer seeds under it (the full count runs without -race).
const raceOn = true
