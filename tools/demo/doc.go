// Package demo holds the single-node demo, demo.sh (run by `make demo`),
// and a test that runs it so that the demo cannot silently rot.
package demo
