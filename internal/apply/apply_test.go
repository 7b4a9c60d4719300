package apply

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/manifest"
)

// fakeFetcher serves content from memory and can misbehave on request.
type fakeFetcher struct {
	content   map[string][]byte
	failAfter int   // with failErr: write this many bytes, then fail
	failErr   error // returned after failAfter bytes
	corrupt   bool  // flip a byte
	block     bool  // block until ctx is done after writing a few bytes
}

func (f *fakeFetcher) Fetch(ctx context.Context, e manifest.Entry, off int64, w io.Writer) (int64, error) {
	data, ok := f.content[e.Path]
	if !ok {
		return 0, fmt.Errorf("no content for %s", e.Path)
	}
	data = data[off:]
	switch {
	case f.failErr != nil:
		n, _ := w.Write(data[:min(f.failAfter, len(data))])
		return int64(n), f.failErr
	case f.block:
		n, _ := w.Write(data[:1])
		<-ctx.Done()
		return int64(n), ctx.Err()
	case f.corrupt:
		c := bytes.Clone(data)
		c[len(c)/2] ^= 1
		n, err := w.Write(c)
		return int64(n), err
	}
	n, err := w.Write(data)
	return int64(n), err
}

func hashOf(b []byte) string {
	h := manifest.NewHash()
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}

var mtime = time.Date(2023, 5, 6, 7, 8, 9, 123456789, time.UTC).UnixNano()

func fileEntry(p string, data []byte, mode fs.FileMode) manifest.Entry {
	return manifest.Entry{Path: p, Type: manifest.File, Mode: mode, Size: int64(len(data)), MTime: mtime, Hash: hashOf(data)}
}

func plan(acts ...manifest.Action) *manifest.Plan { return &manifest.Plan{Actions: acts} }

func noTemps(t *testing.T, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && manifest.IsTemp(d.Name()) {
			t.Errorf("temporary file left: %s", p)
		}
		return nil
	})
}

func TestApplyNewTree(t *testing.T) {
	root := filepath.Join(t.TempDir(), "task")
	a, b := []byte("alpha"), []byte("")
	ff := &fakeFetcher{content: map[string][]byte{"d/a": a, "d/e/b": b}}
	dir := func(p string, mode fs.FileMode) manifest.Entry {
		return manifest.Entry{Path: p, Type: manifest.Dir, Mode: mode, MTime: mtime}
	}
	var progress atomic.Int64
	st, err := Apply(context.Background(), root, plan(
		manifest.Action{Op: manifest.OpMkdir, Entry: dir(".", 0o755)},
		manifest.Action{Op: manifest.OpMkdir, Entry: dir("d", 0o500)},
		manifest.Action{Op: manifest.OpMkdir, Entry: dir("d/e", 0o755)},
		manifest.Action{Op: manifest.OpMkdir, Entry: dir("empty", 0o700)},
		manifest.Action{Op: manifest.OpSymlink, Entry: manifest.Entry{Path: "l", Type: manifest.Symlink, Target: "d/a"}},
		manifest.Action{Op: manifest.OpFetch, Entry: fileEntry("d/a", a, 0o640)},
		manifest.Action{Op: manifest.OpFetch, Entry: fileEntry("d/e/b", b, 0o600)},
		manifest.Action{Op: manifest.OpMeta, Entry: dir("d/e", 0o755)},
		manifest.Action{Op: manifest.OpMeta, Entry: dir("empty", 0o700)},
		manifest.Action{Op: manifest.OpMeta, Entry: dir("d", 0o500)},
		manifest.Action{Op: manifest.OpMeta, Entry: dir(".", 0o755)},
	), Options{Fetcher: ff, Progress: func(n int64) { progress.Add(n) }})
	if err != nil {
		t.Fatal(err)
	}
	if st.Files != 2 || st.Dirs != 4 || st.Symlinks != 1 || st.Bytes != 5 || progress.Load() != 5 {
		t.Errorf("stats %+v, progress %d", st, progress.Load())
	}
	got, err := os.ReadFile(filepath.Join(root, "d/a"))
	if err != nil || string(got) != "alpha" {
		t.Fatalf("d/a = %q, %v", got, err)
	}
	for p, mode := range map[string]fs.FileMode{".": 0o755, "d": 0o500, "d/a": 0o640, "d/e/b": 0o600, "empty": 0o700} {
		fi, err := os.Lstat(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode || fi.ModTime().UnixNano() != mtime {
			t.Errorf("%s: mode %v mtime %v, want %v and %v", p, fi.Mode().Perm(), fi.ModTime().UnixNano(), mode, mtime)
		}
	}
	if target, _ := os.Readlink(filepath.Join(root, "l")); target != "d/a" {
		t.Errorf("symlink target %q", target)
	}
	noTemps(t, root)
}

// replaceSetup makes a tree with an old version of file "f".
func replaceSetup(t *testing.T) (string, []byte, manifest.Entry) {
	t.Helper()
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "f"), []byte("old version"), 0o644); err != nil {
		t.Fatal(err)
	}
	data := []byte("the new version of f")
	return root, data, fileEntry("f", data, 0o644)
}

func TestReplaceKeepsOldOnFailure(t *testing.T) {
	tests := []struct {
		name  string
		ff    func(data []byte) *fakeFetcher
		check func(t *testing.T, err error)
	}{
		{"fetch fails midway", func(d []byte) *fakeFetcher {
			return &fakeFetcher{content: map[string][]byte{"f": d}, failAfter: 5, failErr: errors.New("peer went away")}
		}, func(t *testing.T, err error) {
			if err == nil || !bytes.Contains([]byte(err.Error()), []byte("peer went away")) {
				t.Errorf("err = %v", err)
			}
		}},
		{"hash mismatch", func(d []byte) *fakeFetcher {
			return &fakeFetcher{content: map[string][]byte{"f": d}, corrupt: true}
		}, func(t *testing.T, err error) {
			var hm *HashMismatchError
			if !errors.As(err, &hm) || hm.Path != "f" {
				t.Errorf("err = %v, want a HashMismatchError", err)
			}
		}},
		{"short body", func(d []byte) *fakeFetcher {
			return &fakeFetcher{content: map[string][]byte{"f": d[:4]}}
		}, func(t *testing.T, err error) {
			var hm *HashMismatchError
			if !errors.As(err, &hm) || hm.GotSize != 4 {
				t.Errorf("err = %v, want a size mismatch", err)
			}
		}},
		{"disk full", func(d []byte) *fakeFetcher {
			return &fakeFetcher{content: map[string][]byte{"f": d}, failAfter: 8, failErr: fmt.Errorf("write: %w", syscall.ENOSPC)}
		}, func(t *testing.T, err error) {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Errorf("err = %v, want ENOSPC reachable", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, data, e := replaceSetup(t)
			_, err := Apply(context.Background(), root, plan(manifest.Action{Op: manifest.OpFetch, Entry: e}), Options{Fetcher: tt.ff(data)})
			tt.check(t, err)
			got, _ := os.ReadFile(filepath.Join(root, "f"))
			if string(got) != "old version" {
				t.Errorf("old file changed to %q", got)
			}
			noTemps(t, root)
		})
	}
}

func TestNeverWritesThroughSymlink(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(root, "a")); err != nil {
		t.Fatal(err)
	}
	data := []byte("root:x:0:0")
	ff := &fakeFetcher{content: map[string][]byte{"a/passwd": data}}
	for _, act := range []manifest.Action{
		{Op: manifest.OpFetch, Entry: fileEntry("a/passwd", data, 0o644)},
		{Op: manifest.OpMkdir, Entry: manifest.Entry{Path: "a/sub", Type: manifest.Dir, Mode: 0o755}},
		{Op: manifest.OpSymlink, Entry: manifest.Entry{Path: "a/l", Type: manifest.Symlink, Target: "x"}},
		{Op: manifest.OpRemove, Entry: manifest.Entry{Path: "a/victim", Type: manifest.File}},
	} {
		os.WriteFile(filepath.Join(outside, "victim"), []byte("keep"), 0o644)
		_, err := Apply(context.Background(), root, plan(act), Options{Fetcher: ff})
		if err == nil {
			t.Errorf("%s a/...: succeeded through a symlinked parent", act.Op)
		}
		des, _ := os.ReadDir(outside)
		if len(des) != 1 || des[0].Name() != "victim" {
			t.Errorf("%s: outside dir touched: %v", act.Op, des)
		}
	}
	// A regular file as a parent component is refused too.
	os.WriteFile(filepath.Join(root, "file"), []byte("x"), 0o644)
	_, err := Apply(context.Background(), root, plan(manifest.Action{Op: manifest.OpMkdir, Entry: manifest.Entry{Path: "file/sub", Type: manifest.Dir}}), Options{})
	if err == nil {
		t.Error("mkdir under a regular file succeeded")
	}
	// OpMeta on a path that is a symlink does not chmod its target.
	target := filepath.Join(outside, "victim")
	os.Chmod(target, 0o644)
	os.Symlink(target, filepath.Join(root, "m"))
	_, err = Apply(context.Background(), root, plan(manifest.Action{Op: manifest.OpMeta, Entry: manifest.Entry{Path: "m", Type: manifest.File, Mode: 0o777}}), Options{})
	if fi, _ := os.Stat(target); err == nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("meta through symlink: err %v, target mode %v", err, fi.Mode().Perm())
	}
}

func TestTypeConflictAndSymlinkReplace(t *testing.T) {
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "x"), []byte("file where a dir goes"), 0o644)
	os.Symlink("old", filepath.Join(root, "l"))
	data := []byte("inside")
	_, err := Apply(context.Background(), root, plan(
		manifest.Action{Op: manifest.OpRemove, Entry: manifest.Entry{Path: "x", Type: manifest.File}},
		manifest.Action{Op: manifest.OpMkdir, Entry: manifest.Entry{Path: "x", Type: manifest.Dir, Mode: 0o755}},
		manifest.Action{Op: manifest.OpSymlink, Entry: manifest.Entry{Path: "l", Type: manifest.Symlink, Target: "new"}},
		manifest.Action{Op: manifest.OpFetch, Entry: fileEntry("x/f", data, 0o644)},
	), Options{Fetcher: &fakeFetcher{content: map[string][]byte{"x/f": data}}})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "x/f")); string(got) != "inside" {
		t.Errorf("x/f = %q", got)
	}
	if target, _ := os.Readlink(filepath.Join(root, "l")); target != "new" {
		t.Errorf("l -> %q", target)
	}
	noTemps(t, root)
}

func TestSingleFileTask(t *testing.T) {
	root := filepath.Join(t.TempDir(), "one.bin")
	os.WriteFile(root, []byte("old"), 0o644)
	data := []byte("single file task")
	_, err := Apply(context.Background(), root, plan(manifest.Action{Op: manifest.OpFetch, Entry: fileEntry(".", data, 0o600)}),
		Options{Fetcher: &fakeFetcher{content: map[string][]byte{".": data}}})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(root)
	fi, _ := os.Stat(root)
	if string(got) != string(data) || fi.Mode().Perm() != 0o600 {
		t.Fatalf("file task: %q mode %v", got, fi.Mode())
	}
	noTemps(t, filepath.Dir(root))
}

func TestMetaOnly(t *testing.T) {
	root := t.TempDir()
	p := filepath.Join(root, "f")
	os.WriteFile(p, []byte("same"), 0o600)
	_, err := Apply(context.Background(), root, plan(manifest.Action{Op: manifest.OpMeta, Entry: fileEntry("f", []byte("same"), 0o644)}), Options{})
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(p)
	got, _ := os.ReadFile(p)
	if fi.Mode().Perm() != 0o644 || fi.ModTime().UnixNano() != mtime || string(got) != "same" {
		t.Errorf("meta: mode %v mtime %v content %q", fi.Mode(), fi.ModTime(), got)
	}
}

func TestCancelMidFetch(t *testing.T) {
	root, data, e := replaceSetup(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := Apply(ctx, root, plan(manifest.Action{Op: manifest.OpFetch, Entry: e}),
			Options{Fetcher: &fakeFetcher{content: map[string][]byte{"f": data}, block: true}})
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "f")); string(got) != "old version" {
		t.Errorf("old file changed to %q", got)
	}
	noTemps(t, root)
}

func TestConcurrentFetches(t *testing.T) {
	root := t.TempDir()
	ff := &fakeFetcher{content: map[string][]byte{}}
	var acts []manifest.Action
	var total int64
	for i := range 200 {
		p := fmt.Sprintf("f%03d", i)
		data := bytes.Repeat([]byte{byte(i)}, i+1)
		ff.content[p] = data
		total += int64(len(data))
		acts = append(acts, manifest.Action{Op: manifest.OpFetch, Entry: fileEntry(p, data, 0o644)})
	}
	cache := manifest.NewCache()
	var progress atomic.Int64
	st, err := Apply(context.Background(), root, plan(acts...), Options{Fetcher: ff, Workers: 4, Cache: cache, Progress: func(n int64) { progress.Add(n) }})
	if err != nil {
		t.Fatal(err)
	}
	if st.Files != 200 || st.Bytes != total || progress.Load() != total {
		t.Fatalf("stats %+v progress %d, want 200 files %d bytes", st, progress.Load(), total)
	}
	for p, data := range ff.content {
		got, _ := os.ReadFile(filepath.Join(root, p))
		if !bytes.Equal(got, data) {
			t.Fatalf("%s content wrong", p)
		}
	}
}

func TestSweep(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "task")
	outside := t.TempDir()
	os.MkdirAll(filepath.Join(root, "a/b"), 0o755)
	for _, p := range []string{"a/b/" + manifest.TempPrefix + "1", "a/" + manifest.TempPrefix + "2", manifest.TempPrefix + "3"} {
		os.WriteFile(filepath.Join(root, p), []byte("x"), 0o600)
	}
	os.WriteFile(filepath.Join(base, manifest.TempPrefix+"4"), []byte("x"), 0o600) // next to the root
	os.WriteFile(filepath.Join(outside, manifest.TempPrefix+"5"), []byte("x"), 0o600)
	os.Symlink(outside, filepath.Join(root, "link"))
	os.WriteFile(filepath.Join(root, "a/keep"), []byte("x"), 0o600)
	n, err := Sweep(context.Background(), root)
	if err != nil || n != 4 {
		t.Fatalf("Sweep = %d, %v; want 4", n, err)
	}
	noTemps(t, root)
	if _, err := os.Stat(filepath.Join(outside, manifest.TempPrefix+"5")); err != nil {
		t.Error("Sweep followed a symlink")
	}
	if _, err := os.Stat(filepath.Join(root, "a/keep")); err != nil {
		t.Error("Sweep removed a real file")
	}
	if n, err := Sweep(context.Background(), filepath.Join(base, "missing", "x")); err != nil || n != 0 {
		t.Errorf("missing root: %d, %v", n, err)
	}
}
