package apply

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/fanout/fanout/internal/manifest"
)

func TestSweep(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "task")
	outside := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "a", "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	temps := []string{
		filepath.Join(root, manifest.TempPrefix+"1"),
		filepath.Join(root, "a", manifest.TempPrefix+"2"),
		filepath.Join(root, "a", "b", manifest.TempPrefix+"3"),
		filepath.Join(base, manifest.TempPrefix+"4"), // a file task's, next to the root
	}
	for _, p := range temps {
		writeFile(t, p, "partial", 0o600)
	}
	// A temporary symlink, left by an interrupted symlink replace.
	tempLink := filepath.Join(root, "a", manifest.TempPrefix+"5")
	if err := os.Symlink(outside, tempLink); err != nil {
		t.Fatal(err)
	}
	temps = append(temps, tempLink)
	keep := []string{
		filepath.Join(root, "a", "keep"),
		filepath.Join(root, "a", manifest.TempPrefix), // the bare prefix is not a temp name
		filepath.Join(outside, manifest.TempPrefix+"6"),
		filepath.Join(outside, "sub", manifest.TempPrefix+"7"),
	}
	if err := os.Mkdir(filepath.Join(outside, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range keep {
		writeFile(t, p, "keep", 0o600)
	}
	if err := os.Symlink(outside, filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "sub"), filepath.Join(root, "a", "b", "link")); err != nil {
		t.Fatal(err)
	}
	sw, err := Sweep(context.Background(), root, nil)
	if err != nil || sw.Removed != len(temps) || len(sw.Kept) != 0 {
		t.Fatalf("Sweep = %+v, %v; want %d removed", sw, err, len(temps))
	}
	for _, p := range temps {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s not removed: %v", p, err)
		}
	}
	for _, p := range keep {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s removed: %v", p, err)
		}
	}
	noTemps(t, root)

	if sw, err := Sweep(context.Background(), root, nil); err != nil || sw.Removed != 0 {
		t.Errorf("second Sweep = %+v, %v", sw, err)
	}
}

func TestSweepFileAndMissingRoot(t *testing.T) {
	base := t.TempDir()
	tmp := filepath.Join(base, manifest.TempPrefix+"abc")
	writeFile(t, tmp, "partial", 0o600)
	writeFile(t, filepath.Join(base, "one.bin"), "the file task", 0o644)
	sw, err := Sweep(context.Background(), filepath.Join(base, "one.bin"), nil)
	if err != nil || sw.Removed != 1 {
		t.Fatalf("file task Sweep = %+v, %v; want 1 removed", sw, err)
	}
	if _, err := os.Lstat(filepath.Join(base, "one.bin")); err != nil {
		t.Error(err)
	}
	if sw, err := Sweep(context.Background(), filepath.Join(base, "missing", "task"), nil); err != nil || sw.Removed != 0 {
		t.Errorf("missing root: %+v, %v", sw, err)
	}
	if sw, err := Sweep(context.Background(), filepath.Join(base, "missing"), nil); err != nil || sw.Removed != 0 {
		t.Errorf("missing root in an existing dir: %+v, %v", sw, err)
	}
}

func TestSweepCancelled(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, manifest.TempPrefix+"1"), "x", 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Sweep(ctx, root, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
}

// TestSweepSparesSiblingsInFlight: in the root's parent, shared with other
// tasks' roots, a temporary file modified within parentMinAge (another
// task's transfer in flight) is kept; an older one is removed.
func TestSweepSparesSiblingsInFlight(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "app")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	fresh := filepath.Join(base, manifest.TempPrefix+"sibling-in-flight")
	if err := os.WriteFile(fresh, []byte("being written"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(base, manifest.TempPrefix+"left-by-a-crash")
	writeFile(t, old, "stale", 0o600) // an mtime of 2001
	inRoot := filepath.Join(root, manifest.TempPrefix+"mine")
	if err := os.WriteFile(inRoot, []byte("fresh but under the root"), 0o600); err != nil {
		t.Fatal(err)
	}
	sw, err := Sweep(context.Background(), root, nil)
	if err != nil || sw.Removed != 2 {
		t.Fatalf("Sweep = %+v, %v; want 2 removed", sw, err)
	}
	if _, err := os.Lstat(fresh); err != nil {
		t.Errorf("a fresh temporary file beside the root was removed: %v", err)
	}
	for _, p := range []string{old, inRoot} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s not removed: %v", p, err)
		}
	}
}
