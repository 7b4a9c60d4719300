package manifest

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestDiffActions(t *testing.T) {
	h1, h2 := strings.Repeat("aa", 32), strings.Repeat("bb", 32)
	dir := func(p string, mode fs.FileMode, mt int64) Entry {
		return Entry{Path: p, Type: Dir, Mode: mode, MTime: mt}
	}
	file := func(p string, size int64, h string, mode fs.FileMode, mt int64) Entry {
		return Entry{Path: p, Type: File, Mode: mode, Size: size, MTime: mt, Hash: h}
	}
	link := func(p, target string, mt int64) Entry {
		return Entry{Path: p, Type: Symlink, Mode: 0o777, MTime: mt, Target: target}
	}
	rm := func(e Entry) Action { return Action{OpRemove, e} }
	mk := func(e Entry) Action { return Action{OpMkdir, e} }
	ln := func(e Entry) Action { return Action{OpSymlink, e} }
	get := func(e Entry) Action { return Action{OpFetch, e} }
	meta := func(e Entry) Action { return Action{OpMeta, e} }

	root := dir(".", 0o755, 1)
	d := dir("d", 0o755, 2)
	f := file("d/f", 5, h1, 0o644, 3)
	l := link("l", "d/f", 4)
	tests := []struct {
		name          string
		local, remote []Entry
		del           bool
		want          []Action
	}{
		{"identical, every type", []Entry{root, d, f, l}, []Entry{root, d, f, l}, true, nil},
		{"new file in an existing dir", []Entry{root, d}, []Entry{root, d, f}, false,
			[]Action{get(f), meta(d)}},
		{"new empty dir", []Entry{root}, []Entry{root, d}, false,
			[]Action{mk(d), meta(d), meta(root)}},
		{"new symlink", []Entry{root, d, f}, []Entry{root, d, f, l}, false,
			[]Action{ln(l), meta(root)}},
		{"content changed, same size", []Entry{root, d, file("d/f", 5, h2, 0o644, 3)}, []Entry{root, d, f}, false,
			[]Action{get(f), meta(d)}},
		{"size changed, hash not filled", []Entry{root, d, file("d/f", 9, "", 0o644, 3)}, []Entry{root, d, f}, false,
			[]Action{get(f), meta(d)}},
		{"file mode only", []Entry{root, d, file("d/f", 5, h1, 0o600, 3)}, []Entry{root, d, f}, false,
			[]Action{meta(f)}},
		{"file mtime only", []Entry{root, d, file("d/f", 5, h1, 0o644, 99)}, []Entry{root, d, f}, false,
			[]Action{meta(f)}},
		{"dir mode only", []Entry{root, dir("d", 0o700, 2)}, []Entry{root, d}, false, []Action{meta(d)}},
		{"dir mtime only", []Entry{root, dir("d", 0o755, 7)}, []Entry{root, d}, false, []Action{meta(d)}},
		{"symlink target changed", []Entry{root, d, f, link("l", "elsewhere", 4)}, []Entry{root, d, f, l}, false,
			[]Action{ln(l), meta(root)}},
		{"symlink mode and mtime ignored", []Entry{root, d, f, {Path: "l", Type: Symlink, Mode: 0o755, MTime: 77, Target: "d/f"}},
			[]Entry{root, d, f, l}, false, nil},
		{"file to dir", []Entry{root, file("d", 1, h1, 0o644, 2)}, []Entry{root, d, f}, false,
			[]Action{rm(file("d", 1, h1, 0o644, 2)), mk(d), get(f), meta(d), meta(root)}},
		{"dir to file: its subtree goes with it", []Entry{root, d, f, dir("d/sub", 0o755, 1), file("d/sub/x", 1, h1, 0o644, 1)},
			[]Entry{root, file("d", 5, h2, 0o644, 2)}, true,
			[]Action{rm(d), get(file("d", 5, h2, 0o644, 2)), meta(root)}},
		{"dir to symlink", []Entry{root, d, f}, []Entry{root, link("d", "/etc", 2)}, false,
			[]Action{rm(d), ln(link("d", "/etc", 2)), meta(root)}},
		{"symlink to dir", []Entry{root, link("d", "/etc", 2)}, []Entry{root, d, f}, false,
			[]Action{rm(link("d", "/etc", 2)), mk(d), get(f), meta(d), meta(root)}},
		{"file to symlink", []Entry{root, d, f, file("l", 1, h1, 0o644, 4)}, []Entry{root, d, f, l}, false,
			[]Action{rm(file("l", 1, h1, 0o644, 4)), ln(l), meta(root)}},
		{"symlink to file", []Entry{root, d, link("d/f", "x", 3)}, []Entry{root, d, f}, false,
			[]Action{rm(link("d/f", "x", 3)), get(f), meta(d)}},
		{"type conflict below an unchanged dir", []Entry{root, d, file("d/f", 5, h1, 0o644, 3)},
			[]Entry{root, d, dir("d/f", 0o755, 3), file("d/f/g", 1, h2, 0o644, 3)}, false,
			[]Action{rm(f), mk(dir("d/f", 0o755, 3)), get(file("d/f/g", 1, h2, 0o644, 3)), meta(dir("d/f", 0o755, 3)), meta(d)}},
		{"extras kept without Delete", []Entry{root, d, f, file("d/x", 1, h1, 0o644, 1), dir("y", 0o755, 1), file("y/z", 1, h1, 0o644, 1)},
			[]Entry{root, d, f}, false, nil},
		{"extras removed with Delete: topmost only, deepest first",
			[]Entry{root, d, dir("d/deep", 0o755, 1), dir("d/deep/er", 0o755, 1), file("d/deep/er/x", 1, h1, 0o644, 1),
				f, link("d/x", "f", 1), file("z", 1, h1, 0o644, 1)},
			[]Entry{root, d, f}, true,
			[]Action{rm(dir("d/deep", 0o755, 1)), rm(link("d/x", "f", 1)), rm(file("z", 1, h1, 0o644, 1)), meta(d), meta(root)}},
		{"root dir to file ignores the old tree", []Entry{root, d, f, l}, []Entry{file(".", 5, h1, 0o644, 1)}, true,
			[]Action{rm(root), get(file(".", 5, h1, 0o644, 1))}},
		{"root file to dir", []Entry{file(".", 5, h1, 0o644, 1)}, []Entry{root, d}, false,
			[]Action{rm(file(".", 5, h1, 0o644, 1)), mk(root), mk(d), meta(d), meta(root)}},
		{"root file meta only", []Entry{file(".", 5, h1, 0o600, 1)}, []Entry{file(".", 5, h1, 0o644, 1)}, false,
			[]Action{meta(file(".", 5, h1, 0o644, 1))}},
		{"no local tree", nil, []Entry{root, d, f, l}, false,
			[]Action{mk(root), mk(d), ln(l), get(f), meta(d), meta(root)}},
		{"every kind at once, in plan order",
			[]Entry{root, dir("a", 0o755, 5), dir("a/b", 0o755, 5), file("a/b/old", 1, h1, 0o644, 1), file("k", 5, h1, 0o600, 3), file("m", 5, h1, 0o644, 3)},
			[]Entry{root, dir("a", 0o755, 5), dir("a/b", 0o755, 5), dir("a/b/c", 0o755, 6), file("a/b/c/n", 2, h2, 0o644, 6),
				file("k", 5, h1, 0o644, 3), link("l", "k", 1), file("m", 5, h2, 0o644, 3), dir("n", 0o711, 2)}, true,
			[]Action{
				mk(dir("a/b/c", 0o755, 6)), mk(dir("n", 0o711, 2)),
				ln(link("l", "k", 1)),
				get(file("a/b/c/n", 2, h2, 0o644, 6)), get(file("m", 5, h2, 0o644, 3)),
				meta(file("k", 5, h1, 0o644, 3)),
				// Extras go after the fetches: a renamed file is built
				// from its old copy's chunks.
				rm(file("a/b/old", 1, h1, 0o644, 1)),
				meta(dir("a/b/c", 0o755, 6)), meta(dir("a/b", 0o755, 5)), meta(dir("n", 0o711, 2)), meta(root),
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustDiff(t, &Manifest{Entries: tt.local}, &Manifest{Entries: tt.remote}, DiffOptions{Delete: tt.del})
			if !slices.EqualFunc(p.Actions, tt.want, Action.equal) {
				t.Errorf("plan:\n%s\nwant:\n%s", planString(p.Actions), planString(tt.want))
			}
			if p.Empty() != (len(tt.want) == 0) {
				t.Errorf("Empty() = %v with %d actions", p.Empty(), len(p.Actions))
			}
		})
	}
}

func planString(as []Action) string {
	var b strings.Builder
	for _, a := range as {
		b.WriteString("  " + a.Op.String() + " " + a.Entry.Path + " " + string(a.Entry.Type) + "\n")
	}
	return b.String()
}

func TestPlanHelpers(t *testing.T) {
	p := &Plan{Actions: []Action{
		{OpRemove, Entry{Path: "x", Type: File, Size: 100}},
		{OpFetch, Entry{Path: "a", Type: File, Size: 7}},
		{OpFetch, Entry{Path: "b", Type: File, Size: 5}},
		{OpMeta, Entry{Path: "c", Type: File, Size: 1000}},
	}}
	if got := p.FetchBytes(); got != 12 {
		t.Errorf("FetchBytes = %d, want 12 (only fetched files count)", got)
	}
	for op, want := range map[Op]int{OpRemove: 1, OpMkdir: 0, OpSymlink: 0, OpFetch: 2, OpMeta: 1} {
		if got := p.Count(op); got != want {
			t.Errorf("Count(%v) = %d, want %d", op, got, want)
		}
	}
	if p.Empty() || !(&Plan{}).Empty() {
		t.Error("Empty is wrong")
	}
	for op, want := range map[Op]string{OpRemove: "remove", OpMkdir: "mkdir", OpSymlink: "symlink", OpFetch: "fetch", OpMeta: "meta"} {
		if op.String() != want {
			t.Errorf("Op(%d).String() = %q, want %q", int(op), op.String(), want)
		}
	}
}

// applyForTest is the simplest applier that follows a plan, copying file
// content from src; it shows the plan is complete, not how to apply it well.
func applyForTest(t *testing.T, src, dst string, p *Plan) {
	t.Helper()
	osPath := func(root, rel string) string { return filepath.Join(root, filepath.FromSlash(rel)) }
	setMeta := func(full string, e Entry) {
		if err := os.Chmod(full, e.Mode); err != nil {
			t.Fatal(err)
		}
		mt := time.Unix(0, e.MTime)
		if err := os.Chtimes(full, mt, mt); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range p.Actions {
		full := osPath(dst, a.Entry.Path)
		var err error
		switch a.Op {
		case OpRemove:
			err = os.RemoveAll(full)
		case OpMkdir:
			err = os.Mkdir(full, 0o700)
		case OpSymlink:
			tmp := filepath.Join(filepath.Dir(full), TempPrefix+"link")
			if err = os.Symlink(a.Entry.Target, tmp); err == nil {
				err = os.Rename(tmp, full)
			}
		case OpFetch:
			var data []byte
			if data, err = os.ReadFile(osPath(src, a.Entry.Path)); err != nil {
				break
			}
			tmp := filepath.Join(filepath.Dir(full), TempPrefix+"file")
			if err = os.WriteFile(tmp, data, 0o600); err == nil {
				setMeta(tmp, a.Entry)
				err = os.Rename(tmp, full)
			}
		case OpMeta:
			setMeta(full, a.Entry)
		}
		if err != nil {
			t.Fatalf("%s %s: %v", a.Op, a.Entry.Path, err)
		}
	}
}

// TestDiffConverges applies a plan to a real tree and checks that the
// result diffs empty and matches the source: one pass is enough.
func TestDiffConverges(t *testing.T) {
	ctx := context.Background()
	base := t.TempDir()
	src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
	old := time.Unix(1_600_000_000, 0)
	other := time.Unix(1_600_000_500, 0)
	layout := func(root string, variant bool) {
		for _, d := range []string{"keep/sub", "new/deeper", "tofile", "mode"} {
			if variant && (strings.HasPrefix(d, "new") || d == "tofile") {
				continue
			}
			if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if !variant {
			mustWrite(t, filepath.Join(root, "new/deeper/f"), "new file", 0o644, old)
			mustWrite(t, filepath.Join(root, "keep/same"), "same", 0o644, old)
			mustWrite(t, filepath.Join(root, "keep/sub/changed"), "AAAA", 0o644, old)
			mustWrite(t, filepath.Join(root, "keep/modeonly"), "m", 0o600, old)
			mustWrite(t, filepath.Join(root, "todir"), "", 0o644, old) // a file here, a dir there
			mustWrite(t, filepath.Join(root, "tofile/x"), "x", 0o644, old)
			if err := os.Symlink("keep/same", filepath.Join(root, "link")); err != nil {
				t.Fatal(err)
			}
		} else {
			mustWrite(t, filepath.Join(root, "keep/same"), "same", 0o644, old)
			mustWrite(t, filepath.Join(root, "keep/sub/changed"), "BBBB", 0o644, old)
			mustWrite(t, filepath.Join(root, "keep/modeonly"), "m", 0o644, other)
			mustWrite(t, filepath.Join(root, "keep/extra"), "delete me", 0o644, old)
			if err := os.MkdirAll(filepath.Join(root, "todir/inner"), 0o755); err != nil {
				t.Fatal(err)
			}
			mustWrite(t, filepath.Join(root, "todir/inner/y"), "y", 0o644, old)
			mustWrite(t, filepath.Join(root, "tofile"), "now a file", 0o644, old)
			if err := os.Symlink("elsewhere", filepath.Join(root, "link")); err != nil {
				t.Fatal(err)
			}
		}
		for _, d := range []string{"keep/sub", "keep", "mode", "."} {
			if err := os.Chtimes(filepath.Join(root, d), old, old); err != nil {
				t.Fatal(err)
			}
		}
		if !variant {
			if err := os.Chmod(filepath.Join(root, "mode"), 0o711); err != nil {
				t.Fatal(err)
			}
		}
	}
	layout(src, false)
	layout(dst, true)
	remote, err := Build(ctx, src, Options{Hash: true})
	if err != nil {
		t.Fatal(err)
	}
	scan := func() *Manifest {
		local, err := Build(ctx, dst, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := FillHashes(ctx, dst, local, remote, nil); err != nil {
			t.Fatal(err)
		}
		return local
	}
	plan := mustDiff(t, scan(), remote, DiffOptions{Delete: true})
	// Fetched: the changed file, the new one, and one under each type
	// conflict ("todir" is a file in the source, "tofile" a directory).
	if plan.Count(OpFetch) != 4 || plan.Count(OpRemove) != 3 {
		t.Errorf("plan fetches %d and removes %d, want 4 and 3:\n%s", plan.Count(OpFetch), plan.Count(OpRemove), planString(plan.Actions))
	}
	applyForTest(t, src, dst, plan)
	if again := mustDiff(t, scan(), remote, DiffOptions{Delete: true}); !again.Empty() {
		t.Fatalf("second pass is not empty:\n%s", planString(again.Actions))
	}
	got, err := Build(ctx, dst, Options{Hash: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Entries) != len(remote.Entries) {
		t.Fatalf("copy has %d entries, source %d", len(got.Entries), len(remote.Entries))
	}
	for i, e := range got.Entries {
		r := remote.Entries[i]
		if e.Type == Symlink {
			e.MTime, r.MTime = 0, 0
		}
		if !e.Equal(r) {
			t.Errorf("copy %+v\n     source %+v", e, r)
		}
	}
}

func TestFillHashesOnlySameSizeFiles(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	old := time.Now().Add(-time.Hour)
	for name, content := range map[string]string{
		"same": "12345", "cached": "abcde", "bigger": "123456789", "wasdir": "12345", "extra": "12345", "gone": "12345",
	} {
		mustWrite(t, filepath.Join(root, name), content, 0o644, old)
	}
	local, err := Build(ctx, root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(root, "gone")); err != nil {
		t.Fatal(err)
	}
	h := strings.Repeat("ab", 32)
	remote := &Manifest{Entries: []Entry{
		{Path: ".", Type: Dir, Mode: 0o755},
		{Path: "bigger", Type: File, Size: 5, Hash: h},
		{Path: "cached", Type: File, Size: 5, Hash: h},
		{Path: "gone", Type: File, Size: 5, Hash: h},
		{Path: "same", Type: File, Size: 5, Hash: h},
		{Path: "wasdir", Type: Dir, Mode: 0o755},
	}}
	cache := NewCache()
	fi, err := os.Lstat(filepath.Join(root, "cached"))
	if err != nil {
		t.Fatal(err)
	}
	cache.Put(filepath.Join(root, "cached"), fi, "from-the-cache")
	if err := FillHashes(ctx, root, local, remote, cache); err != nil {
		t.Fatal(err)
	}
	sameHash, err := HashFile(ctx, filepath.Join(root, "same"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		".": "", "bigger": "", "cached": "from-the-cache", "extra": "", "gone": "", "same": sameHash, "wasdir": "",
	}
	for _, e := range local.Entries {
		if e.Hash != want[e.Path] {
			t.Errorf("%s: hash %q, want %q", e.Path, e.Hash, want[e.Path])
		}
	}
	fi, _ = os.Lstat(filepath.Join(root, "same"))
	if got, ok := cache.Get(filepath.Join(root, "same"), fi); !ok || got != sameHash {
		t.Errorf("FillHashes did not record the hash it computed: %q %v", got, ok)
	}

	ctx2, cancel := context.WithCancel(ctx)
	cancel()
	local2, _ := Build(ctx, root, Options{})
	if err := FillHashes(ctx2, root, local2, remote, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("FillHashes with a cancelled context = %v", err)
	}
}

// equal reports whether a and b are the same action on the same entry.
func (a Action) equal(b Action) bool { return a.Op == b.Op && a.Entry.Equal(b.Entry) }

// mustDiff is Diff for plans that must not conflict.
func mustDiff(t testing.TB, local, remote *Manifest, opts DiffOptions) *Plan {
	t.Helper()
	p, err := Diff(local, remote, opts)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
