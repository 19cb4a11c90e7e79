package lab

import "path/filepath"

// layout is where a lab keeps its files, all under one directory, so that
// Down can find every one of them from the directory alone.
type layout struct{ dir string }

func (l layout) state() string       { return filepath.Join(l.dir, "lab.json") }
func (l layout) lock() string        { return filepath.Join(l.dir, "lab.lock") }
func (l layout) config() string      { return filepath.Join(l.dir, "tandem.yaml") }
func (l layout) secret() string      { return filepath.Join(l.dir, "secret") }
func (l layout) bmcPassword() string { return filepath.Join(l.dir, "bmc-password") }
func (l layout) disks() string       { return filepath.Join(l.dir, "disks") }
func (l layout) run() string         { return filepath.Join(l.dir, "run") }
func (l layout) logs() string        { return filepath.Join(l.dir, "log") }
func (l layout) bmcRoot() string     { return filepath.Join(l.dir, "bmc") }
func (l layout) dataDir(n string) string {
	return filepath.Join(l.dir, "data", n)
}
func (l layout) dataRoot() string { return filepath.Join(l.dir, "data") }

func (l layout) disk(node, res string) string {
	return filepath.Join(l.disks(), node+"-"+res+".img")
}
func (l layout) adminSocket(n string) string { return filepath.Join(l.run(), n+".sock") }
func (l layout) pidFile(n string) string     { return filepath.Join(l.run(), n+".pid") }
func (l layout) readyFile(n string) string   { return filepath.Join(l.run(), n+".ready") }

// procRecord is the lab's own record of a process it started: PID and
// start time, so that a reused PID is never signalled.
func (l layout) procRecord(name string) string { return filepath.Join(l.run(), name+".proc") }
func (l layout) power(n string) string         { return filepath.Join(l.run(), n+".power") }
func (l layout) faults() string                { return filepath.Join(l.run(), "faults.json") }
func (l layout) log(name string) string        { return filepath.Join(l.logs(), name+".log") }
func (l layout) bmcDir(n string) string        { return filepath.Join(l.bmcRoot(), n) }
func (l layout) alertProgram() string          { return filepath.Join(l.dir, "alert") }

// alerts is the file the lab's alert program appends node's events to.
func (l layout) alerts(n string) string { return filepath.Join(l.logs(), n+".alerts") }

// made lists every path Up creates at the top of the directory; Down
// removes exactly these (recursively) and then the directory if empty.
func (l layout) made() []string {
	return []string{l.config(), l.secret(), l.bmcPassword(), l.alertProgram(), l.disks(), l.dataRoot(),
		l.run(), l.logs(), l.bmcRoot(), l.state(), l.lock()}
}
