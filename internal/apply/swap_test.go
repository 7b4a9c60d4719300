package apply

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/fanout/fanout/internal/manifest"
)

// swapFetcher is the fake fetcher, except that halfway through fetching
// path at it swaps each directory in swap for a symlink to outside: the
// directory is renamed aside (it stays inside the task root) and a symlink
// takes its name. This is the race a check-then-use applier loses.
type swapFetcher struct {
	*fakeFetcher
	t       *testing.T
	root    string
	at      string
	swap    []string
	outside string
}

func (s *swapFetcher) Fetch(ctx context.Context, e manifest.Entry, off int64, w io.Writer) (int64, error) {
	if e.Path != s.at {
		return s.fakeFetcher.Fetch(ctx, e, off, w)
	}
	data := s.content[e.Path]
	n, err := w.Write(data[:len(data)/2])
	if err != nil {
		return int64(n), err
	}
	for _, d := range s.swap {
		p := filepath.Join(s.root, d)
		if err := os.Rename(p, p+"-moved"); err != nil {
			s.t.Error(err)
		}
		if err := os.Symlink(s.outside, p); err != nil {
			s.t.Error(err)
		}
	}
	m, err := w.Write(data[len(data)/2:])
	return int64(n + m), err
}

// TestParentSwappedForSymlinkMidApply swaps directories of the task for
// symlinks to a directory outside it after the plan was made, while Apply
// runs, and checks that nothing outside changes: a directory Apply already
// opened stays the directory it was (renamed aside, inside the root), and
// one it had not opened yet is refused.
func TestParentSwappedForSymlinkMidApply(t *testing.T) {
	tests := []struct {
		name string
		// late adds a fetch into "b", which Apply had not opened when it
		// was swapped.
		late bool
	}{
		{"directory opened before the swap", false},
		{"directory not opened before the swap", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, outside := t.TempDir(), t.TempDir()
			for _, d := range []string{"a", "b"} {
				if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			writeFile(t, filepath.Join(root, "a", "victim"), "inside", 0o644)
			writeFile(t, filepath.Join(outside, "victim"), "outside", 0o644)
			writeFile(t, filepath.Join(outside, "f2"), "outside", 0o644)
			before := snapshotDir(t, outside)

			content := map[string][]byte{
				"a/f1": []byte("first file in a"),
				"x":    []byte("the fetch during which a and b become symlinks"),
				"a/f2": []byte("second file in a, after the swap"),
				"b/f3": []byte("a file in b, opened only after the swap"),
			}
			victim := fileEntry("a/victim", []byte("inside"), 0o777)
			// Not tree order (Apply runs a plan as given): a/f1 opens "a",
			// x swaps, then a/f2 and the OpMeta go through the handle of
			// "a" opened before the swap.
			acts := []manifest.Action{
				act(manifest.OpFetch, fileEntry("a/f1", content["a/f1"], 0o644)),
				act(manifest.OpFetch, fileEntry("x", content["x"], 0o644)),
				act(manifest.OpFetch, fileEntry("a/f2", content["a/f2"], 0o644)),
			}
			if tt.late {
				acts = append(acts, act(manifest.OpFetch, fileEntry("b/f3", content["b/f3"], 0o644)))
			}
			acts = append(acts, act(manifest.OpMeta, victim))
			ff := &swapFetcher{fakeFetcher: newFetcher(content), t: t, root: root, at: "x", swap: []string{"a", "b"}, outside: outside}
			_, err := Apply(context.Background(), root, plan(acts...), Options{Fetcher: ff, Workers: 1})

			if after := snapshotDir(t, outside); after != before {
				t.Errorf("outside the root changed:\n%s\nwant\n%s", after, before)
			}
			if tt.late {
				if !errors.Is(err, syscall.ENOTDIR) || !strings.Contains(err.Error(), filepath.Join(root, "b")) {
					t.Fatalf("err = %v, want ENOTDIR naming %s", err, filepath.Join(root, "b"))
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				// What went to "a" went to the directory Apply had open.
				moved := filepath.Join(root, "a-moved")
				checkEntry(t, filepath.Join(moved, "f1"), fileEntry("f1", content["a/f1"], 0o644), content["a/f1"])
				checkEntry(t, filepath.Join(moved, "f2"), fileEntry("f2", content["a/f2"], 0o644), content["a/f2"])
				checkEntry(t, filepath.Join(moved, "victim"), fileEntry("victim", []byte("inside"), 0o777), []byte("inside"))
			}
			noTemps(t, root)
			noTemps(t, outside)
		})
	}
}
