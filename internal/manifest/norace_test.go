//go:build !race

package manifest

// raceEnabled is set when the race detector is on: measurements are
// skipped, since they measure it.
const raceEnabled = false
