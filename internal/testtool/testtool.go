// Package testtool finds the programs that tests run besides the Go
// toolchain: redis-server, redis-sentinel, redis-cli, prlimit. A test
// that needs a missing program is
// skipped, with the reason, on a developer's machine; under
// FANOUT_REQUIRE_REDIS=1, which CI sets, it fails instead, so CI cannot
// pass by quietly running fewer tests.
package testtool

import (
	"os"
	"os/exec"
	"testing"
)

// RequireEnv is the variable that turns a missing program into a test
// failure when set to "1". Its name predates the other programs.
const RequireEnv = "FANOUT_REQUIRE_REDIS"

// Required reports whether every program tests need must be present.
func Required() bool { return os.Getenv(RequireEnv) == "1" }

// Need returns the path of the program name found on PATH. When it is
// missing, Need fails t under FANOUT_REQUIRE_REDIS=1 and skips t
// otherwise, naming the program and the package that installs it.
func Need(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		failIfRequired(t, name)
		t.Skipf("%s is not on PATH (%s; set %s=1 to fail instead)", name, install(name), RequireEnv)
	}
	return path
}

// Find is Need for a test that goes on without the program, in a lesser
// form: it returns false, after logging why, instead of skipping t. Under
// FANOUT_REQUIRE_REDIS=1 a missing program still fails t.
func Find(t testing.TB, name string) (string, bool) {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		failIfRequired(t, name)
		t.Logf("%s is not on PATH (%s): the part of the test that needs it does not run; set %s=1 to fail instead", name, install(name), RequireEnv)
		return "", false
	}
	return path, true
}

// failIfRequired fails t for the missing program name under
// FANOUT_REQUIRE_REDIS=1.
func failIfRequired(t testing.TB, name string) {
	t.Helper()
	if Required() {
		t.Fatalf("%s is not on PATH and %s=1: install it (%s)", name, RequireEnv, install(name))
	}
}

// install says how to install the program name on Debian.
func install(name string) string {
	pkg := name
	switch name {
	case "prlimit":
		pkg = "util-linux"
	case "systemd-analyze":
		pkg = "systemd"
	case "redis-cli":
		pkg = "redis-tools"
	}
	return "apt-get install " + pkg
}
