package manifest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/chunk"
	"github.com/fanout/fanout/internal/exclude"
)

func paths(m *Manifest) []string {
	var out []string
	for _, e := range m.Entries {
		out = append(out, e.Path)
	}
	return out
}

// TestBuildExcludes: excluded entries are left out, an excluded
// directory is not descended into, the patterns are recorded, and the
// manifest goes out in format 4 only, which decodes and validates.
func TestBuildExcludes(t *testing.T) {
	root := t.TempDir()
	mt := time.Unix(1_600_000_000, 0)
	for _, d := range []string{"cache/deep", "src/cache", "logs"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	for _, f := range []string{"a.log", "keep.txt", "cache/deep/x", "src/main.go", "src/cache/y", "logs/cache"} {
		mustWrite(t, filepath.Join(root, f), f, 0o644, mt)
	}
	ex, err := exclude.Parse([]string{"*.log", "cache/"})
	if err != nil {
		t.Fatal(err)
	}
	var skipped []string
	p := chunk.DefaultParams()
	m, err := Build(context.Background(), root, Options{Hash: true, Chunking: &p, Exclude: ex, Excluded: func(s string) { skipped = append(skipped, s) }})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{".", "keep.txt", "logs", "logs/cache", "src", "src/main.go"}
	if got := paths(m); !slices.Equal(got, want) {
		t.Fatalf("entries %q, want %q", got, want)
	}
	slices.Sort(skipped)
	if !slices.Equal(skipped, []string{"a.log", "cache", "src/cache"}) {
		t.Fatalf("Excluded told %q", skipped)
	}
	if m.Format() != Format4 {
		t.Fatalf("format %d, want 4", m.Format())
	}
	for _, f := range []int{Format1, Format2, Format3} {
		if _, err := m.EncodeFormat(f); err == nil || !strings.Contains(err.Error(), "exclude") {
			t.Fatalf("format %d with excludes: %v, want a refusal naming the excludes", f, err)
		}
	}
	enc, err := m.EncodeFormat(Format4)
	if err != nil {
		t.Fatal(err)
	}
	d, err := Decode(enc, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(d.Exclude, []string{"*.log", "cache/"}) {
		t.Fatalf("decoded excludes %q", d.Exclude)
	}
	// A manifest listing a path its own patterns exclude is refused.
	bad := strings.Replace(string(enc), `"exclude":["*.log","cache/"]`, `"exclude":["*.log","cache/","keep.txt"]`, 1)
	if _, err := Decode([]byte(bad), DefaultLimits()); err == nil || !strings.Contains(err.Error(), "exclude") {
		t.Fatalf("a manifest with an excluded entry: %v", err)
	}
	bad = strings.Replace(string(enc), `"exclude":["*.log","cache/"]`, `"exclude":["a["]`, 1)
	if _, err := Decode([]byte(bad), DefaultLimits()); err == nil {
		t.Fatal("a manifest with a bad pattern decoded")
	}
}

// TestDiffProtectsExcluded: with delete, an extra directory that holds an
// excluded path stays (its other extras go), and the excluded path itself
// is neither removed nor fetched.
func TestDiffProtectsExcluded(t *testing.T) {
	dir := func(p string) Entry { return Entry{Path: p, Type: Dir, Mode: 0o755} }
	file := func(p string) Entry {
		return Entry{Path: p, Type: File, Mode: 0o644, Size: 1, Hash: strings.Repeat("a", 64)}
	}
	remote := &Manifest{Entries: []Entry{dir("."), file("keep")}}
	// Local scan with "*.log" excluded: old/x.log was left out of it.
	local := &Manifest{Entries: []Entry{dir("."), file("keep"), dir("old"), file("old/extra"), file("stray")}}
	plan := mustDiff(t, local, remote, DiffOptions{Delete: true, Protected: []string{"old/x.log"}})
	var removed []string
	for _, a := range plan.Actions {
		if a.Op == OpRemove {
			removed = append(removed, a.Entry.Path)
		}
		if a.Op == OpFetch {
			t.Errorf("fetches %s", a.Entry.Path)
		}
	}
	slices.Sort(removed)
	if !slices.Equal(removed, []string{"old/extra", "stray"}) {
		t.Fatalf("removes %q, want old/extra and stray (old holds an excluded file)", removed)
	}
	plan = mustDiff(t, local, remote, DiffOptions{Delete: true})
	if plan.Count(OpRemove) != 2 { // old (with its subtree) and stray
		t.Fatalf("without protection: %d removals, want 2", plan.Count(OpRemove))
	}
}

// TestDiffRefusesToReplaceExcluded: where the remote tree has a file, a
// local directory holding an excluded path is not removed, with or
// without delete, and neither is a local entry that is itself excluded
// (a directory-only pattern such as "cache/" does not exclude a file of
// that name): Diff names them in a *ConflictError and plans nothing.
func TestDiffRefusesToReplaceExcluded(t *testing.T) {
	dir := func(p string) Entry { return Entry{Path: p, Type: Dir, Mode: 0o755} }
	file := func(p string) Entry {
		return Entry{Path: p, Type: File, Mode: 0o644, Size: 1, Hash: strings.Repeat("a", 64)}
	}
	link := func(p string) Entry { return Entry{Path: p, Type: Symlink, Mode: 0o777, Target: "x"} }
	for _, tt := range []struct {
		name          string
		local, remote []Entry
		protected     []string
		want          []string // conflicting paths; nil: a plan
		kept          []string
	}{
		{"dir holding an excluded file becomes a file",
			[]Entry{dir("."), dir("a"), file("a/b")}, []Entry{dir("."), file("a")},
			[]string{"a/x.log"}, []string{"a"}, []string{"a/x.log"}},
		{"deeper: the excluded path is two levels down",
			[]Entry{dir("."), dir("a"), dir("a/b")}, []Entry{dir("."), link("a")},
			[]string{"a/b/c/x.log"}, []string{"a"}, []string{"a/b/c/x.log"}},
		{"an excluded directory where the task has a file",
			[]Entry{dir(".")}, []Entry{dir("."), file("cache")},
			[]string{"cache"}, []string{"cache"}, []string{"cache"}},
		{"two conflicts, both named",
			[]Entry{dir("."), dir("a"), dir("b")}, []Entry{dir("."), file("a"), file("b")},
			[]string{"a/1.log", "b/2.log"}, []string{"a", "b"}, []string{"a/1.log", "b/2.log"}},
		{"a directory with nothing excluded is replaced",
			[]Entry{dir("."), dir("a"), file("a/b")}, []Entry{dir("."), file("a")},
			[]string{"other/x.log"}, nil, nil},
	} {
		for _, del := range []bool{false, true} {
			plan, err := Diff(&Manifest{Entries: tt.local}, &Manifest{Entries: tt.remote}, DiffOptions{Delete: del, Protected: tt.protected})
			if tt.want == nil {
				if err != nil || plan.Count(OpRemove) == 0 {
					t.Errorf("%s (delete %v): %v, plan %v; want the directory replaced", tt.name, del, err, plan)
				}
				continue
			}
			var c *ConflictError
			if !errors.As(err, &c) || plan != nil {
				t.Fatalf("%s (delete %v): %v, plan %v; want a conflict", tt.name, del, err, plan)
			}
			if !slices.Equal(c.Paths, tt.want) || !slices.Equal(c.Kept, tt.kept) {
				t.Errorf("%s (delete %v): conflict %q holding %q, want %q holding %q", tt.name, del, c.Paths, c.Kept, tt.want, tt.kept)
			}
			if msg := err.Error(); !strings.Contains(msg, strconv.Quote(tt.want[0])) || !strings.Contains(msg, "move them aside") {
				t.Errorf("%s: the message does not name the path or what to do: %s", tt.name, msg)
			}
		}
	}
}
