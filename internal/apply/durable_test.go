package apply

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/fanout/fanout/internal/manifest"
)

// syncRecorder collects the syncs an applier reports.
type syncRecorder struct {
	mu  sync.Mutex
	got []string
}

func (r *syncRecorder) record(op, p string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, op+" "+p)
}

func (r *syncRecorder) synced() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := slices.Clone(r.got)
	slices.Sort(out)
	return out
}

// TestChangesAreSynced checks that every kind of change is made durable
// before Apply returns: the directory of each removal, creation, symlink
// replacement and fetch is fsynced once, a directory whose own mode changed
// too, and the filesystem of a file whose metadata alone changed is synced.
func TestChangesAreSynced(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"gone/sub", "d", "keep", "links"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(root, "gone", "sub", "x"), "x", 0o644)
	writeFile(t, filepath.Join(root, "keep", "m"), "same", 0o644)
	if err := os.Symlink("old", filepath.Join(root, "links", "l")); err != nil {
		t.Fatal(err)
	}
	data := []byte("new file")
	acts := []manifest.Action{
		act(manifest.OpRemove, dirEntry("gone", 0o755)),
		act(manifest.OpMkdir, dirEntry("new", 0o755)),
		act(manifest.OpSymlink, linkEntry("links/l", "new")),
		act(manifest.OpFetch, fileEntry("d/f", data, 0o644)),
		act(manifest.OpFetch, fileEntry("d/g", data, 0o644)),
		act(manifest.OpMeta, fileEntry("keep/m", []byte("same"), 0o600)),
	}
	a := newApplier(root, Options{Fetcher: newFetcher(map[string][]byte{"d/f": data, "d/g": data})})
	var rec syncRecorder
	a.synced = rec.record
	if _, err := a.apply(context.Background(), plan(acts...)); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"fsync " + root,                         // gone removed, new created
		"fsync " + filepath.Join(root, "d"),     // two files renamed in: once
		"fsync " + filepath.Join(root, "links"), // symlink replaced
		"fsync " + filepath.Join(root, "new"),   // its mode and owner
		"syncfs " + filepath.Join(root, "keep"), // keep/m's mode
	}
	slices.Sort(want)
	if got := rec.synced(); !slices.Equal(got, want) {
		t.Errorf("synced\n%q\nwant\n%q", got, want)
	}
}

// A failed Apply still syncs what it did before the failure, so that a
// later Apply, which finds those changes already made and does not touch
// them, never reports a copy that a crash could still take away.
func TestFailedApplySyncsWhatItDid(t *testing.T) {
	root := t.TempDir()
	errBoom := errors.New("boom")
	data := []byte("content")
	ff := newFetcher(map[string][]byte{"a/f": data, "b/f": data})
	ff.faults["b/f"] = fault{failAfter: 2, err: errBoom}
	acts := []manifest.Action{
		act(manifest.OpMkdir, dirEntry("a", 0o755)),
		act(manifest.OpMkdir, dirEntry("b", 0o755)),
		act(manifest.OpFetch, fileEntry("a/f", data, 0o644)),
		act(manifest.OpFetch, fileEntry("b/f", data, 0o644)),
	}
	a := newApplier(root, Options{Fetcher: ff, Workers: 1})
	var rec syncRecorder
	a.synced = rec.record
	if _, err := a.apply(context.Background(), plan(acts...)); !errors.Is(err, errBoom) {
		t.Fatalf("err = %v, want boom", err)
	}
	want := []string{"fsync " + root, "fsync " + filepath.Join(root, "a"), "fsync " + filepath.Join(root, "b")}
	if got := rec.synced(); !slices.Equal(got, want) {
		t.Errorf("synced %q, want %q", got, want)
	}
	checkEntry(t, filepath.Join(root, "a", "f"), fileEntry("a/f", data, 0o644), data)
	if _, err := os.Lstat(filepath.Join(root, "b", "f")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the failed file is there: %v", err)
	}
	noTemps(t, root)
}

// TestManyDirectories applies a tree with more directories than Apply keeps
// open: handles are closed and reopened as needed, and every directory that
// changed is still fsynced, once.
func TestManyDirectories(t *testing.T) {
	root := t.TempDir()
	content := map[string][]byte{}
	var mkdirs, fetches, metas []manifest.Action
	var want []string
	for i := range 30 {
		d := fmt.Sprintf("d%02d", i)
		mkdirs = append(mkdirs, act(manifest.OpMkdir, dirEntry(d, 0o755)))
		metas = append(metas, act(manifest.OpMeta, dirEntry(d, 0o750)))
		want = append(want, "fsync "+filepath.Join(root, d))
		for j := range 3 {
			p := fmt.Sprintf("%s/f%d", d, j)
			content[p] = []byte(p)
			fetches = append(fetches, act(manifest.OpFetch, fileEntry(p, content[p], 0o644)))
		}
	}
	want = append(want, "fsync "+root)
	slices.Sort(want)
	a := newApplier(root, Options{Fetcher: newFetcher(content), Workers: 3})
	a.maxDirs = 4
	var rec syncRecorder
	most := 0 // open handles at a sync, which runs with a.mu held
	a.synced = func(op, p string) {
		most = max(most, len(a.dirs))
		rec.record(op, p)
	}
	acts := slices.Concat(mkdirs, fetches, metas)
	if _, err := a.apply(context.Background(), plan(acts...)); err != nil {
		t.Fatal(err)
	}
	for _, x := range slices.Concat(fetches, metas) {
		checkEntry(t, filepath.Join(root, x.Entry.Path), x.Entry, content[x.Entry.Path])
	}
	// Each directory is fsynced once its changes are done: when evicted
	// and again if changed after, or at the end; never left out.
	got := slices.Compact(rec.synced())
	if !slices.Equal(got, want) {
		t.Errorf("fsynced\n%q\nwant\n%q", got, want)
	}
	// Root, its parent, and at most one directory per worker beyond the
	// limit (held while in use).
	if most > a.maxDirs+3 {
		t.Errorf("%d directory handles open at once, limit %d", most, a.maxDirs)
	}
	if n := len(a.dirs); n != 0 {
		t.Errorf("%d handles left open", n)
	}
}
