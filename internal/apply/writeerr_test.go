package apply

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/fanout/fanout/internal/manifest"
)

// fsizeChild marks the child process of TestLocalWriteError.
const fsizeChild = "FANOUT_APPLY_FSIZE_CHILD"

// TestLocalWriteError makes a real local write fail: a file size limit
// (RLIMIT_FSIZE) turns writes past it into EFBIG, as a full disk turns them
// into ENOSPC. The limit is process-wide, so the test runs in a child
// process of its own.
func TestLocalWriteError(t *testing.T) {
	if os.Getenv(fsizeChild) == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestLocalWriteError$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), fsizeChild+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		return
	}
	root, data, e := replaceSetup(t)
	const limit = 32 // more than the old file, less than the new one
	if len(data) <= limit {
		t.Fatal("test data too small")
	}
	if err := unix.Setrlimit(unix.RLIMIT_FSIZE, &unix.Rlimit{Cur: limit, Max: unix.RLIM_INFINITY}); err != nil {
		t.Fatal(err)
	}
	// The fake fetcher does not wrap the writer's error: Apply must report
	// its own write error anyway.
	_, err := Apply(context.Background(), root, plan(act(manifest.OpFetch, e)),
		Options{Fetcher: newFetcher(map[string][]byte{"f": data})})
	if !errors.Is(err, syscall.EFBIG) {
		t.Fatalf("err = %v, want EFBIG reachable", err)
	}
	var hm *HashMismatchError
	if errors.As(err, &hm) {
		t.Errorf("a local write error blamed the source: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "f")); string(got) != "old version" {
		t.Errorf("old file changed to %q", got)
	}
	noTemps(t, root)
}
