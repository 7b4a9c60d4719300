package peer

import (
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path"
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
	var o opener
	defer o.close()
	return o.open(root, p)
}

// An opener opens files as openEntry does, keeping the directory of the
// last one open: the files of a batch mostly share a directory, and
// checking the way there once is most of the cost of opening a small file
// (a handful of system calls a component). The directory handle was
// checked when it was opened; a directory renamed or swapped for a symlink
// since keeps serving what it holds until the batch moves on to another
// directory (a batch lasts about a second), as a file opened before the
// rename would. Only regular files that are not symlinks are opened from
// it, and what is served is checked as before: by the origin against its
// manifest (VerifyServed), by every puller against the chunk hashes. The
// zero value is ready; close releases the handle.
type opener struct {
	root, dir string   // the task root and the manifest path of dirRoot
	dirRoot   *os.Root // nil: none open
}

// open opens the regular file at manifest path p of the task rooted at
// root (see openEntry).
func (o *opener) open(root, p string) (*os.File, error) {
	dir, base := filepath.Dir(root), filepath.Base(root)
	if p != "." {
		dir, base = path.Split(p)
		dir = strings.TrimSuffix(dir, "/")
		if o.dirRoot == nil || o.root != root || o.dir != dir {
			o.close()
			rt, err := openTaskDir(root, p, dir)
			if err != nil {
				return nil, err
			}
			o.root, o.dir, o.dirRoot = root, dir, rt
		}
		return openIn(o.dirRoot, p, base)
	}
	rt, err := os.OpenRoot(dir)
	if err != nil {
		return nil, openError(p, err)
	}
	defer rt.Close()
	return openIn(rt, p, base)
}

// close releases the directory handle, if any.
func (o *opener) close() {
	if o.dirRoot != nil {
		o.dirRoot.Close()
		o.dirRoot = nil
	}
}

// openTaskDir opens directory dir (a manifest path, "" for the root) of the
// task rooted at root, on the way to entry p: the task root must still be
// a directory, and every directory down to dir a real one, no symlink.
func openTaskDir(root, p, dir string) (*os.Root, error) {
	// The task root itself must still be a directory, not a symlink
	// swapped in since the manifest was built.
	fi, err := os.Lstat(root)
	if err != nil {
		return nil, openError(p, err)
	}
	if !fi.IsDir() {
		// Peers are not told where the tree lives on this host; the log is
		// (the cause is logged with the refusal).
		return nil, &httpError{
			code: http.StatusConflict,
			msg:  fmt.Sprintf("task root changed on disk: a %v, not a directory", fi.Mode().Type()),
			err:  fmt.Errorf("task root %s", root),
		}
	}
	rt, err := os.OpenRoot(root)
	if err != nil {
		return nil, openError(p, err)
	}
	// OpenRoot follows a symlink: the root opened must be the directory
	// just seen, not one swapped in since.
	if rfi, err := rt.Stat("."); err != nil || !os.SameFile(fi, rfi) {
		rt.Close()
		if err != nil {
			return nil, openError(p, err)
		}
		return nil, errorf(http.StatusConflict, "%s changed on disk while being opened", quote(p))
	}
	if dir == "" {
		return rt, nil
	}
	defer rt.Close()
	// os.Root follows symlinks that stay inside it; refuse them instead, so
	// a peer serves exactly the tree its manifest describes.
	parts := strings.Split(dir, "/")
	var last fs.FileInfo
	for i := range parts {
		prefix := filepath.Join(parts[:i+1]...)
		if last, err = rt.Lstat(prefix); err != nil {
			return nil, openError(p, err)
		}
		if !last.IsDir() {
			return nil, errorf(http.StatusConflict, "%s changed on disk: %s is a %v, not a directory", quote(p), quote(filepath.ToSlash(prefix)), last.Mode().Type())
		}
	}
	sub, err := rt.OpenRoot(filepath.FromSlash(dir))
	if err != nil {
		return nil, openError(p, err)
	}
	fi, err = sub.Stat(".")
	if err != nil || !os.SameFile(last, fi) {
		sub.Close()
		if err != nil {
			return nil, openError(p, err)
		}
		return nil, errorf(http.StatusConflict, "%s changed on disk while being opened", quote(p))
	}
	return sub, nil
}

// openIn opens base, the last component of manifest path p, in directory
// rt: a regular file, not a symlink.
func openIn(rt *os.Root, p, base string) (*os.File, error) {
	lfi, err := rt.Lstat(base)
	if err != nil {
		return nil, openError(p, err)
	}
	if !lfi.Mode().IsRegular() {
		return nil, errorf(http.StatusConflict, "%s changed on disk: not a regular file (%v)", quote(p), lfi.Mode().Type())
	}
	// O_NONBLOCK keeps a fifo swapped in since the Lstat from blocking the
	// open; it does not change reads of a regular file.
	f, err := rt.OpenFile(base, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
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
