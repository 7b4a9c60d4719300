package peer

import (
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// openEntry opens the regular file at manifest path p (valid, see validPath)
// of the task rooted at root, following no symlink: every directory on the
// way must be a real directory, the file itself a regular file, and all of it
// inside the task root (os.Root enforces that even against a tree changing
// under us). For a file task, root is the file and p is ".".
//
// A path the tree no longer holds as the manifest describes it is an
// httpError with status 409: the tree changed since its manifest was built.
func openEntry(root, p string) (*os.File, error) {
	dir, name := root, filepath.FromSlash(p)
	if p == "." {
		dir, name = filepath.Dir(root), filepath.Base(root)
	} else {
		// The task root itself must still be a directory, not a symlink
		// swapped in since the manifest was built.
		fi, err := os.Lstat(root)
		if err != nil {
			return nil, openError(p, err)
		}
		if !fi.IsDir() {
			// Peers are not told where the tree lives on this host; the
			// log is (the cause is logged with the refusal).
			return nil, &httpError{
				code: http.StatusConflict,
				msg:  fmt.Sprintf("task root changed on disk: a %v, not a directory", fi.Mode().Type()),
				err:  fmt.Errorf("task root %s", root),
			}
		}
	}
	rt, err := os.OpenRoot(dir)
	if err != nil {
		return nil, openError(p, err)
	}
	defer rt.Close()

	// os.Root follows symlinks that stay inside it; refuse them instead, so a
	// peer serves exactly the tree its manifest describes.
	parts := strings.Split(name, string(filepath.Separator))
	for i := 1; i < len(parts); i++ {
		prefix := filepath.Join(parts[:i]...)
		fi, err := rt.Lstat(prefix)
		if err != nil {
			return nil, openError(p, err)
		}
		if !fi.IsDir() {
			return nil, errorf(http.StatusConflict, "%s changed on disk: %s is a %v, not a directory", quote(p), quote(filepath.ToSlash(prefix)), fi.Mode().Type())
		}
	}
	lfi, err := rt.Lstat(name)
	if err != nil {
		return nil, openError(p, err)
	}
	if !lfi.Mode().IsRegular() {
		return nil, errorf(http.StatusConflict, "%s changed on disk: not a regular file (%v)", quote(p), lfi.Mode().Type())
	}
	// O_NONBLOCK keeps a fifo swapped in since the Lstat from blocking the
	// open; it does not change reads of a regular file.
	f, err := rt.OpenFile(name, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, openError(p, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	if !os.SameFile(lfi, fi) {
		f.Close()
		return nil, errorf(http.StatusConflict, "%s changed on disk while being opened", quote(p))
	}
	return f, nil
}

// openError classifies a failure to reach manifest path p on disk.
func openError(p string, err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) || errors.Is(err, syscall.ELOOP) {
		return &httpError{code: http.StatusConflict, msg: fmt.Sprintf("%s changed on disk", quote(p)), err: err}
	}
	return fmt.Errorf("open %q: %w", p, err)
}
