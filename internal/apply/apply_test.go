package apply

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/fanout/fanout/internal/manifest"
)

func TestApplyNewTree(t *testing.T) {
	root := filepath.Join(t.TempDir(), "task")
	content := map[string][]byte{
		"d/a":     []byte("alpha"),
		"d/e/b":   {},
		"g/tool":  []byte("#!/bin/sh\necho hi\n"),
		"top.txt": bytes.Repeat([]byte("0123456789"), 1000),
	}
	dirs := []manifest.Entry{
		dirEntry(".", 0o755),
		dirEntry("d", 0o500), // read-only, yet its children are written
		dirEntry("d/e", 0o750),
		dirEntry("empty", 0o700),
		owned(dirEntry("g", fs.ModeSetgid|0o775)),
	}
	files := []manifest.Entry{
		fileEntry("d/a", content["d/a"], 0o640),
		fileEntry("d/e/b", content["d/e/b"], 0o600),
		owned(fileEntry("g/tool", content["g/tool"], fs.ModeSetuid|0o755)),
		fileEntry("top.txt", content["top.txt"], 0o444),
	}
	links := []manifest.Entry{
		linkEntry("l", "d/a"),
		linkEntry("d/e/up", "../../top.txt"),
		linkEntry("dangling", "/nonexistent/target"),
	}
	var acts []manifest.Action
	for _, e := range dirs {
		acts = append(acts, act(manifest.OpMkdir, e))
	}
	for _, e := range links {
		acts = append(acts, act(manifest.OpSymlink, e))
	}
	for _, e := range files {
		acts = append(acts, act(manifest.OpFetch, e))
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		acts = append(acts, act(manifest.OpMeta, dirs[i]))
	}
	var progress atomic.Int64
	var want int64
	for _, c := range content {
		want += int64(len(c))
	}
	cache := manifest.NewCache()
	st, err := Apply(context.Background(), root, plan(acts...),
		Options{Fetcher: newFetcher(content), Cache: cache, Progress: func(n int64) { progress.Add(n) }})
	if err != nil {
		t.Fatal(err)
	}
	wantStats := Stats{Files: len(files), Dirs: len(dirs), Symlinks: len(links), Meta: len(dirs), Bytes: want}
	if st != wantStats || progress.Load() != want {
		t.Errorf("stats %+v, progress %d; want %+v, %d", st, progress.Load(), wantStats, want)
	}
	for _, e := range append(append(dirs, files...), links...) {
		checkEntry(t, filepath.Join(root, e.Path), e, content[e.Path])
	}
	for _, e := range files {
		p := filepath.Join(root, e.Path)
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if h, ok := cache.Get(p, fi); !ok || h != e.Hash {
			t.Errorf("cache for %s: %q %v, want %q", e.Path, h, ok, e.Hash)
		}
	}
	noTemps(t, root)
}

// replaceSetup makes a tree with an old version of file "f".
func replaceSetup(t *testing.T) (root string, data []byte, e manifest.Entry) {
	t.Helper()
	root = t.TempDir()
	writeFile(t, filepath.Join(root, "f"), "old version", 0o644)
	data = []byte("the new version of f, a little longer than the old one")
	return root, data, fileEntry("f", data, 0o600)
}

func TestReplaceIsAtomic(t *testing.T) {
	root, data, e := replaceSetup(t)
	p := filepath.Join(root, "f")
	reader, err := os.Open(p) // a reader that opened the old version
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	if _, err := Apply(context.Background(), root, plan(act(manifest.OpFetch, e)),
		Options{Fetcher: newFetcher(map[string][]byte{"f": data})}); err != nil {
		t.Fatal(err)
	}
	checkEntry(t, p, e, data)
	// The new version is a new inode: the old reader still sees the old
	// bytes, whole, which an in-place rewrite would not give it.
	old := make([]byte, 64)
	n, _ := reader.ReadAt(old, 0)
	if string(old[:n]) != "old version" {
		t.Errorf("open reader sees %q", old[:n])
	}
	noTemps(t, root)
}

func TestReplaceKeepsOldOnFailure(t *testing.T) {
	errPeer := errors.New("peer went away")
	tests := []struct {
		name  string
		fault fault
		check func(t *testing.T, err error, e manifest.Entry)
	}{
		{"fetch fails midway", fault{failAfter: 9, err: fmt.Errorf("read body: %w", errPeer)},
			func(t *testing.T, err error, _ manifest.Entry) {
				if !errors.Is(err, errPeer) {
					t.Errorf("err = %v, want the fetcher's error reachable", err)
				}
			}},
		{"wrong bytes", fault{wrong: true}, func(t *testing.T, err error, e manifest.Entry) {
			var hm *HashMismatchError
			if !errors.As(err, &hm) {
				t.Fatalf("err = %v, want a HashMismatchError", err)
			}
			if hm.Path != "f" || hm.Want != e.Hash || hm.Got == e.Hash || hm.Got == "" || hm.GotSize != e.Size {
				t.Errorf("mismatch %+v", hm)
			}
		}},
		{"short body", fault{failAfter: 4, err: nil}, nil}, // filled in below
		{"long body", fault{extra: 3}, func(t *testing.T, err error, e manifest.Entry) {
			var hm *HashMismatchError
			if !errors.As(err, &hm) || hm.GotSize <= e.Size || hm.WantSize != e.Size {
				t.Errorf("err = %v, want a size mismatch over %d", err, e.Size)
			}
		}},
		{"disk full", fault{failAfter: 20, err: fmt.Errorf("write: %w", syscall.ENOSPC)},
			func(t *testing.T, err error, _ manifest.Entry) {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Errorf("err = %v, want ENOSPC reachable", err)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, data, e := replaceSetup(t)
			ff := newFetcher(map[string][]byte{"f": data})
			ff.faults["f"] = tt.fault
			check := tt.check
			if tt.name == "short body" {
				ff.faults["f"] = fault{}
				ff.content["f"] = data[:4]
				check = func(t *testing.T, err error, e manifest.Entry) {
					var hm *HashMismatchError
					if !errors.As(err, &hm) || hm.GotSize != 4 || hm.WantSize != e.Size {
						t.Errorf("err = %v, want a size mismatch of 4", err)
					}
				}
			}
			st, err := Apply(context.Background(), root, plan(act(manifest.OpFetch, e)), Options{Fetcher: ff})
			if err == nil {
				t.Fatal("Apply succeeded")
			}
			check(t, err, e)
			if !strings.Contains(err.Error(), "fetch f:") {
				t.Errorf("error %q does not name the entry", err)
			}
			if st.Files != 0 || st.Bytes != 0 {
				t.Errorf("stats %+v count a failed fetch", st)
			}
			old := fileEntry("f", []byte("old version"), 0o644)
			old.MTime = 1_000_000_000 * 1e9
			checkEntry(t, filepath.Join(root, "f"), old, []byte("old version"))
			noTemps(t, root)
		})
	}
}

func TestFirstErrorStopsOthers(t *testing.T) {
	root := t.TempDir()
	errBoom := errors.New("boom")
	content := map[string][]byte{}
	var acts []manifest.Action
	for i := range 12 {
		p := fmt.Sprintf("f%02d", i)
		content[p] = []byte(strings.Repeat(p, 10))
		acts = append(acts, act(manifest.OpFetch, fileEntry(p, content[p], 0o644)))
	}
	ff := newFetcher(content)
	for p := range content {
		ff.faults[p] = fault{block: true}
	}
	ff.faults["f00"] = fault{failAfter: 3, err: errBoom}
	acts = append(acts, act(manifest.OpMeta, dirEntry(".", 0o711)))
	st, err := Apply(context.Background(), root, plan(acts...), Options{Fetcher: ff, Workers: 4})
	if !errors.Is(err, errBoom) || !strings.Contains(err.Error(), "f00") {
		t.Fatalf("err = %v, want boom naming f00", err)
	}
	if n := ff.uncancelled.Load(); n != 0 {
		t.Errorf("%d fetches were not cancelled", n)
	}
	if n := ff.cur.Load(); n != 0 {
		t.Errorf("%d fetches still running after Apply returned", n)
	}
	if st.Files != 0 || st.Meta != 0 {
		t.Errorf("stats %+v", st)
	}
	if fi, _ := os.Stat(root); fi.Mode().Perm() == 0o711 {
		t.Error("the meta after the failed fetches ran")
	}
	if des, _ := os.ReadDir(root); len(des) != 0 {
		t.Errorf("files left: %v", des)
	}
}

func TestCancelMidFetch(t *testing.T) {
	root, data, e := replaceSetup(t)
	ff := newFetcher(map[string][]byte{"f": data})
	ff.faults["f"] = fault{block: true}
	ff.started = make(chan string, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := Apply(ctx, root, plan(act(manifest.OpFetch, e)), Options{Fetcher: ff})
		done <- err
	}()
	<-ff.started
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if n := ff.cur.Load(); n != 0 {
		t.Errorf("%d fetches still running after Apply returned", n)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "f")); string(got) != "old version" {
		t.Errorf("old file changed to %q", got)
	}
	noTemps(t, root)
}

func TestCancelledBeforeStart(t *testing.T) {
	root := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Apply(ctx, root, plan(act(manifest.OpMkdir, dirEntry("d", 0o755))), Options{})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v", err)
	}
	if _, err := os.Lstat(filepath.Join(root, "d")); err == nil {
		t.Error("a cancelled Apply created a directory")
	}
}

func TestConcurrentFetches(t *testing.T) {
	for _, workers := range []int{4, 0} { // 0: the default, 4
		t.Run(fmt.Sprintf("workers=%d", workers), func(t *testing.T) {
			root := t.TempDir()
			content := map[string][]byte{}
			var acts []manifest.Action
			var total int64
			for i := range 200 {
				p := fmt.Sprintf("d%d/f%03d", i%3, i)
				data := bytes.Repeat([]byte{byte(i)}, i+1)
				content[p] = data
				total += int64(len(data))
				acts = append(acts, act(manifest.OpFetch, fileEntry(p, data, 0o644)))
			}
			for i := range 3 {
				acts = append([]manifest.Action{act(manifest.OpMkdir, dirEntry(fmt.Sprintf("d%d", i), 0o755))}, acts...)
			}
			ff := newFetcher(content)
			ff.overlap = true
			var progress atomic.Int64
			st, err := Apply(context.Background(), root, plan(acts...),
				Options{Fetcher: ff, Workers: workers, Progress: func(n int64) { progress.Add(n) }})
			if err != nil {
				t.Fatal(err)
			}
			if st.Files != 200 || st.Bytes != total || progress.Load() != total {
				t.Errorf("stats %+v progress %d, want 200 files %d bytes", st, progress.Load(), total)
			}
			if m := ff.max.Load(); m < 2 || m > 4 {
				t.Errorf("%d fetches ran at once, want 2 to 4", m)
			}
			for p, data := range content {
				if got, _ := os.ReadFile(filepath.Join(root, p)); !bytes.Equal(got, data) {
					t.Fatalf("%s content wrong", p)
				}
			}
			noTemps(t, root)
		})
	}
}

func TestSymlinkReplace(t *testing.T) {
	root := t.TempDir()
	if err := os.Symlink("old", filepath.Join(root, "l")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(root, "f"), "a file", 0o644)
	l, f := linkEntry("l", "new"), linkEntry("f", "target")
	st, err := Apply(context.Background(), root, plan(act(manifest.OpSymlink, l), act(manifest.OpSymlink, f)), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Symlinks != 2 {
		t.Errorf("stats %+v", st)
	}
	checkEntry(t, filepath.Join(root, "l"), l, nil)
	checkEntry(t, filepath.Join(root, "f"), f, nil)

	// A directory in the way is the plan's mistake: refused, kept.
	if err := os.Mkdir(filepath.Join(root, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(root, "d", "keep"), "x", 0o644)
	_, err = Apply(context.Background(), root, plan(act(manifest.OpSymlink, linkEntry("d", "x"))), Options{})
	if !errors.Is(err, syscall.EISDIR) {
		t.Errorf("symlink over a directory: err = %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "d", "keep")); err != nil {
		t.Error(err)
	}
	noTemps(t, root)
}

func TestTypeConflicts(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	writeFile(t, filepath.Join(outside, "precious"), "keep", 0o644)
	before := snapshotDir(t, outside)

	writeFile(t, filepath.Join(root, "x"), "a file where a dir goes", 0o644)
	if err := os.MkdirAll(filepath.Join(root, "y", "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(root, "y", "sub", "z"), "a dir where a file goes", 0o644)
	if err := os.Symlink(outside, filepath.Join(root, "s")); err != nil {
		t.Fatal(err)
	}
	inside, yData := []byte("inside"), []byte("y is a file now")
	content := map[string][]byte{"x/f": inside, "y": yData, "s/f": inside}
	acts := []manifest.Action{
		act(manifest.OpRemove, manifest.Entry{Path: "y", Type: manifest.Dir}),
		act(manifest.OpRemove, manifest.Entry{Path: "x", Type: manifest.File}),
		act(manifest.OpRemove, manifest.Entry{Path: "s", Type: manifest.Symlink}),
		act(manifest.OpMkdir, dirEntry("s", 0o755)),
		act(manifest.OpMkdir, dirEntry("x", 0o755)),
		act(manifest.OpFetch, fileEntry("s/f", inside, 0o644)),
		act(manifest.OpFetch, fileEntry("x/f", inside, 0o644)),
		act(manifest.OpFetch, fileEntry("y", yData, 0o644)),
	}
	st, err := Apply(context.Background(), root, plan(acts...), Options{Fetcher: newFetcher(content)})
	if err != nil {
		t.Fatal(err)
	}
	if st.Removed != 3 || st.Dirs != 2 || st.Files != 3 {
		t.Errorf("stats %+v", st)
	}
	for _, a := range acts {
		if a.Op == manifest.OpFetch {
			checkEntry(t, filepath.Join(root, a.Entry.Path), a.Entry, content[a.Entry.Path])
		}
	}
	if fi, err := os.Lstat(filepath.Join(root, "s")); err != nil || !fi.IsDir() {
		t.Errorf("s is not a real directory: %v", err)
	}
	if after := snapshotDir(t, outside); after != before {
		t.Errorf("removing a symlink touched its target:\n%s\nwant\n%s", after, before)
	}

	// Without the removal, each type conflict is an error that keeps
	// what is there.
	for _, a := range []manifest.Action{
		act(manifest.OpMkdir, dirEntry("y", 0o755)),          // y is a file
		act(manifest.OpFetch, fileEntry("x", inside, 0o644)), // x is a dir
	} {
		_, err := Apply(context.Background(), root, plan(a), Options{Fetcher: newFetcher(map[string][]byte{"x": inside})})
		if err == nil {
			t.Errorf("%s %s over another type succeeded", a.Op, a.Entry.Path)
		}
	}
	checkEntry(t, filepath.Join(root, "y"), fileEntry("y", yData, 0o644), yData)
	if got, _ := os.ReadFile(filepath.Join(root, "x", "f")); !bytes.Equal(got, inside) {
		t.Errorf("x/f = %q", got)
	}
	noTemps(t, root)
}

func TestNeverWritesThroughSymlink(t *testing.T) {
	data := []byte("root:x:0:0")
	tests := []struct {
		name string
		acts []manifest.Action
	}{
		{"fetch", []manifest.Action{act(manifest.OpFetch, fileEntry("a/passwd", data, 0o644))}},
		{"fetch deeper", []manifest.Action{act(manifest.OpFetch, fileEntry("a/sub/passwd", data, 0o644))}},
		{"mkdir", []manifest.Action{act(manifest.OpMkdir, dirEntry("a/newdir", 0o755))}},
		{"symlink", []manifest.Action{act(manifest.OpSymlink, linkEntry("a/l", "x"))}},
		{"remove", []manifest.Action{act(manifest.OpRemove, manifest.Entry{Path: "a/victim", Type: manifest.File})}},
		{"meta", []manifest.Action{act(manifest.OpMeta, fileEntry("a/victim", []byte("keep"), 0o777))}},
		{"meta on the link", []manifest.Action{act(manifest.OpMeta, dirEntry("a", 0o777))}},
		{"plan makes the link", []manifest.Action{
			act(manifest.OpRemove, manifest.Entry{Path: "a", Type: manifest.Symlink}),
			act(manifest.OpSymlink, linkEntry("b", "OUTSIDE")),
			act(manifest.OpFetch, fileEntry("b/passwd", data, 0o644)),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, outside := t.TempDir(), t.TempDir()
			if err := os.Mkdir(filepath.Join(outside, "sub"), 0o755); err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(outside, "victim"), "keep", 0o644)
			if err := os.Symlink(outside, filepath.Join(root, "a")); err != nil {
				t.Fatal(err)
			}
			for i, a := range tt.acts {
				if a.Entry.Target == "OUTSIDE" {
					tt.acts[i].Entry.Target = outside
				}
			}
			before := snapshotDir(t, outside)
			ff := newFetcher(map[string][]byte{"a/passwd": data, "a/sub/passwd": data, "b/passwd": data})
			_, err := Apply(context.Background(), root, plan(tt.acts...), Options{Fetcher: ff})
			if err == nil {
				t.Fatal("Apply succeeded through a symlinked parent")
			}
			if tt.name != "meta on the link" && !errors.Is(err, syscall.ENOTDIR) {
				t.Errorf("err = %v, want ENOTDIR", err)
			}
			if !strings.Contains(err.Error(), root) {
				t.Errorf("error %q does not name the path", err)
			}
			if after := snapshotDir(t, outside); after != before {
				t.Errorf("outside dir changed:\n%s\nwant\n%s", after, before)
			}
			noTemps(t, root)
		})
	}
}

func TestRootMustBeRealDir(t *testing.T) {
	base, outside := t.TempDir(), t.TempDir()
	root := filepath.Join(base, "task")
	if err := os.Symlink(outside, root); err != nil {
		t.Fatal(err)
	}
	_, err := Apply(context.Background(), root, plan(act(manifest.OpMkdir, dirEntry("d", 0o755))), Options{})
	if !errors.Is(err, syscall.ENOTDIR) {
		t.Errorf("err = %v, want ENOTDIR", err)
	}
	if des, _ := os.ReadDir(outside); len(des) != 0 {
		t.Errorf("wrote through a symlinked root: %v", des)
	}
}

func TestFileAsParent(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "file"), "x", 0o644)
	data := []byte("data")
	for _, a := range []manifest.Action{
		act(manifest.OpMkdir, dirEntry("file/sub", 0o755)),
		act(manifest.OpFetch, fileEntry("file/x", data, 0o644)),
		act(manifest.OpSymlink, linkEntry("file/l", "t")),
	} {
		_, err := Apply(context.Background(), root, plan(a), Options{Fetcher: newFetcher(map[string][]byte{"file/x": data})})
		if !errors.Is(err, syscall.ENOTDIR) || !strings.Contains(err.Error(), filepath.Join(root, "file")) {
			t.Errorf("%s under a file: err = %v, want ENOTDIR naming it", a.Op, err)
		}
	}
	if got, _ := os.ReadFile(filepath.Join(root, "file")); string(got) != "x" {
		t.Errorf("file changed to %q", got)
	}
	noTemps(t, root)
}

func TestRejectsBadPlan(t *testing.T) {
	tests := []struct {
		name string
		a    manifest.Action
	}{
		{"dotdot", act(manifest.OpMkdir, dirEntry("../escape", 0o755))},
		{"inner dotdot", act(manifest.OpSymlink, linkEntry("ok/../../escape", "x"))},
		{"absolute", act(manifest.OpRemove, manifest.Entry{Path: "/tmp", Type: manifest.Dir})},
		{"empty", act(manifest.OpMkdir, dirEntry("", 0o755))},
		{"unclean", act(manifest.OpMkdir, dirEntry("a//b", 0o755))},
		{"dot component", act(manifest.OpMkdir, dirEntry("./a", 0o755))},
		{"fetch of a dir", act(manifest.OpFetch, dirEntry("d", 0o755))},
		{"mkdir of a file", act(manifest.OpMkdir, fileEntry("d", nil, 0o644))},
		{"fetch without fetcher", act(manifest.OpFetch, fileEntry("f", nil, 0o644))},
		{"unknown op", act(manifest.Op(99), dirEntry("d", 0o755))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := t.TempDir()
			root := filepath.Join(base, "task")
			if err := os.Mkdir(root, 0o755); err != nil {
				t.Fatal(err)
			}
			before := snapshotDir(t, base)
			// The valid first action must not run either: the plan is
			// checked before anything is written.
			_, err := Apply(context.Background(), root, plan(act(manifest.OpMkdir, dirEntry("first", 0o755)), tt.a), Options{})
			if err == nil {
				t.Fatal("Apply accepted the plan")
			}
			if after := snapshotDir(t, base); after != before {
				t.Errorf("a rejected plan changed the tree:\n%s", after)
			}
		})
	}
}

func TestSingleFileTask(t *testing.T) {
	tests := []struct {
		name         string
		exists, link bool
	}{
		{"replace", true, false},
		{"new", false, false},
		{"parent reached through a symlink", true, true}, // the operator's layout
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := t.TempDir()
			dir := base
			if tt.link {
				link := filepath.Join(t.TempDir(), "link")
				if err := os.Symlink(base, link); err != nil {
					t.Fatal(err)
				}
				dir = link
			}
			root := filepath.Join(dir, "one.bin")
			if tt.exists {
				writeFile(t, root, "old", 0o644)
			}
			data := []byte("single file task")
			e := fileEntry(".", data, 0o600)
			st, err := Apply(context.Background(), root, plan(act(manifest.OpFetch, e)),
				Options{Fetcher: newFetcher(map[string][]byte{".": data})})
			if err != nil {
				t.Fatal(err)
			}
			if st.Files != 1 || st.Bytes != int64(len(data)) {
				t.Errorf("stats %+v", st)
			}
			checkEntry(t, root, e, data)
			noTemps(t, base)

			// Then a metadata-only change of the same file.
			e.Mode = 0o640
			e.MTime += 1e9
			if _, err := Apply(context.Background(), root, plan(act(manifest.OpMeta, e)), Options{}); err != nil {
				t.Fatal(err)
			}
			checkEntry(t, root, e, data)
		})
	}
}

func TestMetaOnly(t *testing.T) {
	root := t.TempDir()
	p := filepath.Join(root, "f")
	writeFile(t, p, "same", 0o600)
	if err := os.Mkdir(filepath.Join(root, "d"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("f", filepath.Join(root, "l")); err != nil {
		t.Fatal(err)
	}
	f, d := owned(fileEntry("f", []byte("same"), fs.ModeSetuid|0o755)), dirEntry("d", fs.ModeSticky|0o777)
	l := linkEntry("l", "f")
	st, err := Apply(context.Background(), root, plan(
		act(manifest.OpMeta, f), act(manifest.OpMeta, l), act(manifest.OpMeta, d)), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Meta != 3 || st.Files != 0 {
		t.Errorf("stats %+v", st)
	}
	checkEntry(t, p, f, []byte("same"))
	checkEntry(t, filepath.Join(root, "d"), d, nil)
	// The symlink's own mtime changed; its target's did not change again.
	if fi, _ := os.Lstat(filepath.Join(root, "l")); fi.ModTime().UnixNano() != mtime {
		t.Errorf("symlink mtime %v", fi.ModTime())
	}

	// The entry must have the type the plan says.
	for _, a := range []manifest.Action{
		act(manifest.OpMeta, dirEntry("f", 0o700)),
		act(manifest.OpMeta, fileEntry("l", []byte("same"), 0o777)), // l is a symlink to f
		act(manifest.OpMeta, fileEntry("missing", nil, 0o644)),
	} {
		if _, err := Apply(context.Background(), root, plan(a), Options{}); err == nil {
			t.Errorf("meta %s as a %s succeeded", a.Entry.Path, a.Entry.Type)
		}
	}
	checkEntry(t, p, f, []byte("same"))
}

func TestRemoveRoot(t *testing.T) {
	root := filepath.Join(t.TempDir(), "task")
	if err := os.MkdirAll(filepath.Join(root, "a", "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	data := []byte("now a file task")
	e := fileEntry(".", data, 0o644)
	st, err := Apply(context.Background(), root, plan(
		act(manifest.OpRemove, dirEntry(".", 0o755)),
		act(manifest.OpFetch, e),
	), Options{Fetcher: newFetcher(map[string][]byte{".": data})})
	if err != nil {
		t.Fatal(err)
	}
	if st.Removed != 1 || st.Files != 1 {
		t.Errorf("stats %+v", st)
	}
	checkEntry(t, root, e, data)
}

// TestDebugEnabled: per-file debug lines are built only for a logger at
// debug level, and for loggers whose level cannot be told.
func TestDebugEnabled(t *testing.T) {
	l := logrus.New()
	l.SetLevel(logrus.InfoLevel)
	if debugEnabled(l) || debugEnabled(l.WithField("k", "v")) {
		t.Error("debug reported on for a logger at info level")
	}
	l.SetLevel(logrus.DebugLevel)
	if !debugEnabled(l) || !debugEnabled(l.WithField("k", "v")) {
		t.Error("debug reported off for a logger at debug level")
	}
	var other logrus.FieldLogger = struct{ logrus.FieldLogger }{l}
	if !debugEnabled(other) {
		t.Error("debug reported off for a logger of unknown type")
	}
}
