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
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/manifest"
)

// fault is how the fake fetcher misbehaves for one path.
type fault struct {
	failAfter int   // with err: write this many bytes, then return err
	err       error // returned after failAfter bytes
	wrong     bool  // flip one byte of the content
	extra     int   // send this many bytes beyond the content
	block     bool  // write half the content, then block until ctx is done
}

// fakeFetcher serves file content from memory, misbehaving on request. It
// tracks how many fetches are in flight.
type fakeFetcher struct {
	content map[string][]byte
	faults  map[string]fault
	// started, when set, receives the path of every fetch as it starts.
	started chan string
	// overlap makes the first fetch wait for a second one to start, to
	// prove that fetches run concurrently.
	overlap bool

	cur, max    atomic.Int64
	uncancelled atomic.Int64 // blocked fetches whose ctx was never done
	overlapped  chan struct{}
	once        sync.Once
}

func newFetcher(content map[string][]byte) *fakeFetcher {
	return &fakeFetcher{content: content, faults: map[string]fault{}, overlapped: make(chan struct{})}
}

func (f *fakeFetcher) Fetch(ctx context.Context, e manifest.Entry, off int64, w io.Writer) (int64, error) {
	n := f.cur.Add(1)
	defer f.cur.Add(-1)
	for m := f.max.Load(); n > m && !f.max.CompareAndSwap(m, n); m = f.max.Load() {
	}
	if n >= 2 {
		f.once.Do(func() { close(f.overlapped) })
	}
	if f.started != nil {
		f.started <- e.Path
	}
	if f.overlap {
		select {
		case <-f.overlapped:
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(30 * time.Second): // a deadlock guard, not a speed limit
			return 0, errors.New("fetches never ran concurrently")
		}
	}
	data, ok := f.content[e.Path]
	if !ok {
		return 0, fmt.Errorf("no content for %s", e.Path)
	}
	data = data[off:]
	ft := f.faults[e.Path]
	switch {
	case ft.err != nil:
		n, _ := w.Write(data[:min(ft.failAfter, len(data))])
		return int64(n), ft.err
	case ft.block:
		n, err := w.Write(data[:len(data)/2])
		if err != nil {
			return int64(n), err
		}
		select {
		case <-ctx.Done():
			return int64(n), ctx.Err()
		case <-time.After(30 * time.Second): // a deadlock guard, not a speed limit
			f.uncancelled.Add(1)
			return int64(n), errors.New("fetch was never cancelled")
		}
	case ft.wrong:
		data = bytes.Clone(data)
		data[len(data)/2] ^= 1
	case ft.extra > 0:
		data = append(bytes.Clone(data), bytes.Repeat([]byte("x"), ft.extra)...)
	}
	// Write in small chunks, as a network copy would.
	var sent int64
	for len(data) > 0 {
		k := min(7, len(data))
		n, err := w.Write(data[:k])
		sent += int64(n)
		if err != nil {
			// Like a careless client, do not wrap the writer's error.
			return sent, fmt.Errorf("copy body: %v", err)
		}
		data = data[k:]
	}
	return sent, nil
}

func hashOf(b []byte) string {
	h := manifest.NewHash()
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}

// mtime is a fixed past time with nanoseconds, so it cannot be mistaken for
// the time a file was written.
var mtime = time.Date(2023, 5, 6, 7, 8, 9, 123456789, time.UTC).UnixNano()

func fileEntry(p string, data []byte, mode fs.FileMode) manifest.Entry {
	return manifest.Entry{Path: p, Type: manifest.File, Mode: mode, Size: int64(len(data)), MTime: mtime, Hash: hashOf(data)}
}

func dirEntry(p string, mode fs.FileMode) manifest.Entry {
	return manifest.Entry{Path: p, Type: manifest.Dir, Mode: mode, MTime: mtime}
}

func linkEntry(p, target string) manifest.Entry {
	return manifest.Entry{Path: p, Type: manifest.Symlink, Target: target, MTime: mtime}
}

// owned gives e this test process's effective uid and gid as its owner:
// without chown, an entry keeps its setuid and setgid bits only when it
// carries the owner it will have.
func owned(e manifest.Entry) manifest.Entry {
	e.UID, e.GID = manifest.NewOwnerID(int64(os.Geteuid())), manifest.NewOwnerID(int64(os.Getegid()))
	return e
}

func act(op manifest.Op, e manifest.Entry) manifest.Action { return manifest.Action{Op: op, Entry: e} }

func plan(acts ...manifest.Action) *manifest.Plan { return &manifest.Plan{Actions: acts} }

// noTemps fails the test if any temporary file is left under dir.
func noTemps(t *testing.T, dir string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if manifest.IsTemp(d.Name()) {
			t.Errorf("temporary file left: %s", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// writeFile creates a file with content, mode and the old time.
func writeFile(t *testing.T, p, content string, mode fs.FileMode) {
	t.Helper()
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	old := time.Unix(1_000_000_000, 0)
	if err := os.Chtimes(p, old, old); err != nil {
		t.Fatal(err)
	}
}

const modeBits = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

// checkEntry checks what is at p against a manifest entry.
func checkEntry(t *testing.T, p string, e manifest.Entry, content []byte) {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Error(err)
		return
	}
	if got := kind(fi); got != string(e.Type) {
		t.Errorf("%s is a %s, want a %s", e.Path, got, e.Type)
		return
	}
	switch e.Type {
	case manifest.Symlink:
		if target, _ := os.Readlink(p); target != e.Target {
			t.Errorf("%s -> %q, want %q", e.Path, target, e.Target)
		}
		return
	case manifest.File:
		if got, _ := os.ReadFile(p); !bytes.Equal(got, content) {
			t.Errorf("%s holds %q, want %q", e.Path, got, content)
		}
	}
	if got := fi.Mode() & modeBits; got != e.Mode {
		t.Errorf("%s mode %v, want %v", e.Path, got, e.Mode)
	}
	if got := fi.ModTime().UnixNano(); got != e.MTime {
		t.Errorf("%s mtime %v, want %v", e.Path, time.Unix(0, got), time.Unix(0, e.MTime))
	}
}

// snapshotDir describes every entry under dir (name, type, mode, content),
// to prove a directory was left untouched.
func snapshotDir(t *testing.T, dir string) string {
	t.Helper()
	var b bytes.Buffer
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %v %d", p, fi.Mode(), fi.ModTime().UnixNano())
		if fi.Mode().IsRegular() {
			c, _ := os.ReadFile(p)
			fmt.Fprintf(&b, " %q", c)
		}
		b.WriteByte('\n')
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}
