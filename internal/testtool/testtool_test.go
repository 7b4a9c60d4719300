package testtool

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// recorder is a testing.TB that records how a helper ended the test: like
// the real one, Fatalf and Skipf stop the goroutine that called them.
type recorder struct {
	testing.TB
	fatal, skip, log string
}

func (r *recorder) Helper()                   {}
func (r *recorder) Logf(f string, a ...any)   { r.log = fmt.Sprintf(f, a...) }
func (r *recorder) Fatalf(f string, a ...any) { r.fatal = fmt.Sprintf(f, a...); runtime.Goexit() }
func (r *recorder) Skipf(f string, a ...any)  { r.skip = fmt.Sprintf(f, a...); runtime.Goexit() }

// call runs fn with a recorder on its own goroutine, as a test body runs.
func call(t *testing.T, fn func(testing.TB)) *recorder {
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(r)
	}()
	<-done
	return r
}

func TestNeedAndFind(t *testing.T) {
	dir := t.TempDir()
	tool := filepath.Join(dir, "fanout-test-tool")
	if err := os.WriteFile(tool, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	for _, required := range []string{"", "1"} {
		t.Setenv(RequireEnv, required)
		var path string
		var found bool
		r := call(t, func(tb testing.TB) { path = Need(tb, "fanout-test-tool") })
		if path != tool || r.fatal != "" || r.skip != "" {
			t.Errorf("%s=%q, present: Need = %q, fatal %q, skip %q; want %q", RequireEnv, required, path, r.fatal, r.skip, tool)
		}
		r = call(t, func(tb testing.TB) { path, found = Find(tb, "fanout-test-tool") })
		if path != tool || !found || r.fatal != "" {
			t.Errorf("%s=%q, present: Find = %q, %v, fatal %q", RequireEnv, required, path, found, r.fatal)
		}

		r = call(t, func(tb testing.TB) { Need(tb, "prlimit") })
		switch {
		case required == "1" && (r.fatal == "" || r.skip != ""):
			t.Errorf("%s=1, missing: Need did not fail (skip %q)", RequireEnv, r.skip)
		case required == "" && (r.skip == "" || r.fatal != ""):
			t.Errorf("%s unset, missing: Need did not skip (fatal %q)", RequireEnv, r.fatal)
		}
		if msg := r.fatal + r.skip; !strings.Contains(msg, "prlimit is not on PATH") || !strings.Contains(msg, "apt-get install util-linux") {
			t.Errorf("Need's message %q does not say what is missing and how to install it", msg)
		}

		found = true
		r = call(t, func(tb testing.TB) { _, found = Find(tb, "redis-server") })
		switch {
		case required == "1" && r.fatal == "":
			t.Errorf("%s=1, missing: Find did not fail", RequireEnv)
		case required == "" && (found || r.fatal != "" || r.skip != "" || !strings.Contains(r.log, "redis-server is not on PATH")):
			t.Errorf("%s unset, missing: Find = %v, fatal %q, skip %q, log %q; want false and a log line", RequireEnv, found, r.fatal, r.skip, r.log)
		}
	}
}
