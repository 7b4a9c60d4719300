package manifest

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/chunk"
	"github.com/fanout/fanout/internal/exclude"
)

// TestUpdateMatchesBuild: after creates, edits, renames, deletes and a
// directory moved out and another moved in, Update given the changed
// paths (as a watcher reports them) equals a full Build, reads only the
// changed subtrees, and falls back to a full build when a change is
// missing from its list.
func TestUpdateMatchesBuild(t *testing.T) {
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "root")
	outside := t.TempDir()
	mt := time.Unix(1_600_000_000, 0)
	for _, d := range []string{"a/deep", "b", "c", "skip"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	for _, f := range []string{"a/deep/1", "a/2", "b/3", "c/4", "top", "skip/x"} {
		mustWrite(t, filepath.Join(root, f), f, 0o644, mt)
	}
	os.MkdirAll(filepath.Join(outside, "in/sub"), 0o755)
	mustWrite(t, filepath.Join(outside, "in/sub/5"), "five", 0o644, mt)
	ex, _ := exclude.Parse([]string{"/skip/", "*.tmp"})
	p := chunk.DefaultParams()
	opts := Options{Hash: true, Chunking: &p, Exclude: ex, Cache: NewCache()}
	prev, err := Build(ctx, root, opts)
	if err != nil {
		t.Fatal(err)
	}
	// The changes, and the paths a watcher reports for them.
	mustWrite(t, filepath.Join(root, "a/2"), "two, edited", 0o644, mt)      // write
	os.Rename(filepath.Join(root, "top"), filepath.Join(root, "b/top2"))    // rename across dirs
	os.Remove(filepath.Join(root, "c/4"))                                   // delete
	os.Rename(filepath.Join(root, "a/deep"), filepath.Join(outside, "out")) // moved out
	os.Rename(filepath.Join(outside, "in"), filepath.Join(root, "c/in"))    // moved in, with contents
	mustWrite(t, filepath.Join(root, "b/junk.tmp"), "x", 0o644, mt)         // excluded
	changed := []string{"a/2", "top", "b/top2", "c/4", "a/deep", "c/in", "b/junk.tmp"}
	want, err := Build(ctx, root, opts)
	if err != nil {
		t.Fatal(err)
	}
	got, fell, err := Update(ctx, root, prev, changed, opts)
	if err != nil {
		t.Fatal(err)
	}
	if fell {
		t.Fatal("Update fell back to a full build for a complete list of changes")
	}
	if !slices.EqualFunc(got.Entries, want.Entries, Entry.Equal) {
		t.Fatalf("Update:\n%q\nBuild:\n%q", paths(got), paths(want))
	}
	ge, _ := got.EncodeFormat(Format4)
	we, _ := want.EncodeFormat(Format4)
	if Digest(ge) != Digest(we) {
		t.Fatal("Update and Build encode differently")
	}
	// A change left out of the list: "b" vanishes but only "b/3" is
	// reported; its parent cannot be read again, so Update builds it all.
	os.RemoveAll(filepath.Join(root, "b"))
	got, fell, err = Update(ctx, root, want, []string{"b/3"}, opts)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := Build(ctx, root, opts)
	if !fell || !slices.EqualFunc(got.Entries, again.Entries, Entry.Equal) {
		t.Fatalf("with a lost event: fell back %v, entries %q, want %q", fell, paths(got), paths(again))
	}
}
