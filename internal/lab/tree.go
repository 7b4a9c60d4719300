package lab

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// SampleTree writes a tree that exercises every kind of entry fanout
// copies: nested directories, an empty directory, relative, absolute and
// dangling symlinks, a big file of bigSize bytes, small files, odd names,
// and varied modes and modification times.
func SampleTree(dir string, bigSize int64, small int) error {
	r := rand.New(rand.NewPCG(1, 2))
	old := time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)
	mk := func(p string, mode fs.FileMode) error {
		return os.MkdirAll(filepath.Join(dir, p), mode)
	}
	write := func(p string, data []byte, mode fs.FileMode, mtime time.Time) error {
		full := filepath.Join(dir, p)
		if err := os.WriteFile(full, data, mode); err != nil {
			return err
		}
		if err := os.Chmod(full, mode); err != nil {
			return err
		}
		return os.Chtimes(full, mtime, mtime)
	}
	for _, d := range []string{"weights/shards", "config", "empty", "docs/a/b/c"} {
		if err := mk(d, 0o755); err != nil {
			return err
		}
	}
	big := make([]byte, bigSize)
	for i := 0; i < len(big); i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < len(big); j++ {
			big[i+j] = byte(v >> (8 * j))
		}
	}
	if err := write("weights/model.bin", big, 0o644, old); err != nil {
		return err
	}
	for i := range small {
		data := make([]byte, 1+r.IntN(8192))
		for j := range data {
			data[j] = byte(r.Uint32())
		}
		if err := write(fmt.Sprintf("weights/shards/shard-%04d.bin", i), data, 0o640, old.Add(time.Duration(i)*time.Second)); err != nil {
			return err
		}
	}
	if err := write("config/run.sh", []byte("#!/bin/sh\necho serving m42\n"), 0o755, old); err != nil {
		return err
	}
	if err := write("config/secret.yaml", []byte("token: not-a-real-one\n"), 0o600, old); err != nil {
		return err
	}
	// Names valid on the source but odd: a newline, a 255-byte name.
	if err := write("docs/line\nbreak.txt", []byte("odd\n"), 0o644, old); err != nil {
		return err
	}
	if err := write("docs/"+strings.Repeat("n", 251)+".txt", []byte("long\n"), 0o644, old); err != nil {
		return err
	}
	if err := write("docs/a/b/c/deep note with spaces – ünïcode.txt", []byte("deep\n"), 0o644, old); err != nil {
		return err
	}
	if err := write("docs/empty-file", nil, 0o644, old); err != nil {
		return err
	}
	for link, target := range map[string]string{
		"current":        "weights/model.bin",
		"config/abs":     "/etc/hostname",
		"config/dangles": "../nowhere",
	} {
		if err := os.Symlink(target, filepath.Join(dir, link)); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(dir, "docs/a"), 0o750); err != nil {
		return err
	}
	for _, d := range []string{"docs/a/b/c", "docs/a/b", "docs/a", "docs", "empty", "config", "weights/shards", "weights", "."} {
		if err := os.Chtimes(filepath.Join(dir, d), old, old); err != nil {
			return err
		}
	}
	return nil
}

// Compare checks that tree got is an exact copy of tree want: the same
// paths; the same type; byte-identical regular files with the same mode and
// mtime; directories with the same mode and mtime; symlinks with the same
// target text. It reports every difference it finds (up to 20). It reads
// both trees with Lstat and plain reads, independent of the code it checks.
func Compare(want, got string) error {
	wm, err := snapshotTree(want)
	if err != nil {
		return err
	}
	gm, err := snapshotTree(got)
	if err != nil {
		return err
	}
	var diffs []string
	add := func(format string, a ...any) {
		if len(diffs) < 20 {
			diffs = append(diffs, fmt.Sprintf(format, a...))
		}
	}
	paths := make([]string, 0, len(wm))
	for p := range wm {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		w := wm[p]
		g, ok := gm[p]
		if !ok {
			add("%s: missing", p)
			continue
		}
		switch {
		case w.mode.Type() != g.mode.Type():
			add("%s: type %v, want %v", p, g.mode.Type(), w.mode.Type())
		case w.mode.Type() == fs.ModeSymlink:
			if w.target != g.target {
				add("%s: symlink target %q, want %q", p, g.target, w.target)
			}
		default:
			if w.mode.Perm() != g.mode.Perm() {
				add("%s: mode %v, want %v", p, g.mode.Perm(), w.mode.Perm())
			}
			if !w.mtime.Equal(g.mtime) {
				add("%s: mtime %v, want %v", p, g.mtime, w.mtime)
			}
			if w.mode.IsRegular() {
				same, err := sameContent(filepath.Join(want, p), filepath.Join(got, p))
				if err != nil {
					return err
				}
				if !same {
					add("%s: content differs", p)
				}
			}
		}
	}
	for p := range gm {
		if _, ok := wm[p]; !ok {
			add("%s: extra", p)
		}
	}
	if len(diffs) > 0 {
		sort.Strings(diffs)
		return fmt.Errorf("%s differs from %s:\n  %s", got, want, joinLines(diffs))
	}
	return nil
}

type entryInfo struct {
	mode   fs.FileMode
	mtime  time.Time
	target string
}

func snapshotTree(root string) (map[string]entryInfo, error) {
	out := map[string]entryInfo{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		e := entryInfo{mode: fi.Mode(), mtime: fi.ModTime()}
		if fi.Mode()&fs.ModeSymlink != 0 {
			if e.target, err = os.Readlink(p); err != nil {
				return err
			}
		}
		out[rel] = e
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read tree %s: %w", root, err)
	}
	return out, nil
}

func sameContent(a, b string) (bool, error) {
	fa, err := os.Open(a)
	if err != nil {
		return false, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return false, err
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return false, nil
		}
		if errors.Is(ea, io.EOF) || errors.Is(ea, io.ErrUnexpectedEOF) {
			return errors.Is(eb, io.EOF) || errors.Is(eb, io.ErrUnexpectedEOF), nil
		}
		if ea != nil {
			return false, ea
		}
		if eb != nil {
			return false, eb
		}
	}
}

func joinLines(s []string) string {
	var b bytes.Buffer
	for i, l := range s {
		if i > 0 {
			b.WriteString("\n  ")
		}
		b.WriteString(l)
	}
	return b.String()
}

// TempFiles lists fanout temporary files left anywhere under root.
func TempFiles(root string, isTemp func(string) bool) ([]string, error) {
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if isTemp(d.Name()) {
			out = append(out, p)
		}
		return nil
	})
	return out, err
}

// Corrupt flips one byte in the middle of the file at p, keeping its size
// and mtime, the way a bad disk would: nothing but the content hash can
// tell.
func Corrupt(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	if len(b) == 0 {
		return fmt.Errorf("corrupt %s: empty file", p)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(p, b, fi.Mode()); err != nil {
		return err
	}
	return os.Chtimes(p, fi.ModTime(), fi.ModTime())
}
