package peer

import (
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
)

// TestOpener opens the files of a batch as openEntry does: a directory
// handle is reused for the files that share it, and no symlink on the way
// or at the end is followed, whether the opener had a handle or not.
func TestOpener(t *testing.T) {
	outside := t.TempDir()
	root := filepath.Join(t.TempDir(), "task")
	write := func(p, body string) {
		t.Helper()
		full := filepath.Join(root, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("top", "top")
	write("a/b/f1", "f1")
	write("a/b/f2", "f2")
	write("c/f3", "f3")
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, l := range []struct{ name, target string }{
		{"l", "a/b"},                   // a directory symlink inside the tree
		{"a/b/s", "f1"},                // a file symlink
		{"e", outside},                 // a directory symlink out of the tree
		{"c/out", outside + "/secret"}, // a file symlink out of the tree
	} {
		if err := os.Symlink(l.target, filepath.Join(root, filepath.FromSlash(l.name))); err != nil {
			t.Fatal(err)
		}
	}

	var o opener
	defer o.close()
	read := func(p string) (string, error) {
		t.Helper()
		f, err := o.open(root, p)
		if err != nil {
			return "", err
		}
		defer f.Close()
		b, err := io.ReadAll(f)
		if err != nil {
			t.Fatal(err)
		}
		return string(b), nil
	}
	conflict := func(p string) {
		t.Helper()
		_, err := read(p)
		var he *httpError
		if !errors.As(err, &he) || he.code != http.StatusConflict {
			t.Errorf("open %s: %v, want a 409 (changed on disk)", p, err)
		}
	}
	for _, p := range []string{"a/b/f1", "a/b/f2", "top", "c/f3", "a/b/f1"} {
		if got, err := read(p); err != nil || got != filepath.Base(p) {
			t.Errorf("open %s = %q, %v; want %q", p, got, err, filepath.Base(p))
		}
	}
	// With the handle of a/b open, then without any.
	if _, err := read("a/b/f2"); err != nil {
		t.Fatal(err)
	}
	conflict("a/b/s")
	for _, p := range []string{"l/f1", "e/secret", "c/out", "a/b/missing", "a/b/f1/x"} {
		o.close()
		conflict(p)
		if _, err := read("a/b/f1"); err != nil {
			t.Fatal(err)
		}
		conflict(p)
	}
	// A directory swapped for a symlink is refused once the opener moves
	// on to it.
	if err := os.Rename(filepath.Join(root, "c"), filepath.Join(root, "c.old")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("a/b", filepath.Join(root, "c")); err != nil {
		t.Fatal(err)
	}
	conflict("c/f1")
	// So is a task root swapped for a symlink.
	if err := os.Rename(root, root+".old"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(root+".old", root); err != nil {
		t.Fatal(err)
	}
	o.close()
	conflict("top")
	conflict("a/b/f1")
}
