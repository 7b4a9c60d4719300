package apply

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/fanout/fanout/internal/manifest"
)

// do runs one action other than a fetch.
func (a *applier) do(act manifest.Action) error {
	e := act.Entry
	p := a.osPath(e.Path)
	err := a.checkParents(e.Path)
	if err == nil {
		switch act.Op {
		case manifest.OpRemove:
			err = a.remove(p)
		case manifest.OpMkdir:
			err = a.mkdir(p, e)
		case manifest.OpSymlink:
			err = a.symlink(p, e)
		case manifest.OpMeta:
			err = a.meta(p, e)
		}
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", act.Op, e.Path, err)
	}
	a.log.WithField("path", e.Path).Debugf("%s done", act.Op)
	a.done(act.Op, 0)
	return nil
}

// remove deletes the entry at p, a directory with its whole subtree. A
// symlink at p is removed itself, never followed.
func (a *applier) remove(p string) error {
	if err := os.RemoveAll(p); err != nil {
		return err
	}
	a.forget(p)
	a.touch(filepath.Dir(p))
	return nil
}

// mkdir creates the directory p, or accepts a real directory already there.
// A new directory stays owner-writable until its OpMeta sets the final
// mode, so its children can be written even when that mode is read-only.
func (a *applier) mkdir(p string, e manifest.Entry) error {
	err := os.Mkdir(p, 0o700|e.Mode.Perm())
	if errors.Is(err, fs.ErrExist) {
		fi, lerr := os.Lstat(p)
		if lerr != nil {
			return lerr
		}
		if !fi.IsDir() {
			return fmt.Errorf("%s exists and is a %s: %w", p, kind(fi), fs.ErrExist)
		}
		a.markDir(p)
		return nil
	}
	if err != nil {
		return err
	}
	a.markDir(p)
	a.touch(filepath.Dir(p))
	// Chmod beats the umask and sets setgid, which children inherit.
	return os.Chmod(p, 0o700|e.Mode)
}

// symlink creates a symlink at a temporary name next to p and renames it
// over p, so p is replaced atomically.
func (a *applier) symlink(p string, e manifest.Entry) error {
	if fi, err := os.Lstat(p); err == nil && fi.IsDir() {
		return fmt.Errorf("%s is a directory: %w", p, syscall.EISDIR)
	}
	dir := filepath.Dir(p)
	tmp, err := tempName(dir)
	if err != nil {
		return err
	}
	if err := os.Symlink(e.Target, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return err
	}
	a.touch(dir)
	return nil
}

// meta sets the mode and mtime of an existing entry, after checking with
// Lstat that it has the expected type, so neither ever goes through a
// symlink. A symlink only gets its mtime: Linux ignores a symlink's mode.
func (a *applier) meta(p string, e manifest.Entry) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	if got := kind(fi); got != string(e.Type) {
		return fmt.Errorf("%s is a %s, want a %s", p, got, e.Type)
	}
	if e.Type != manifest.Symlink {
		if err := os.Chmod(p, e.Mode); err != nil {
			return err
		}
	}
	return setMTime(p, e.MTime)
}

// setMTime sets the access and modification times of p to ns (Unix
// nanoseconds) without following a symlink at p.
func setMTime(p string, ns int64) error {
	ts := unix.NsecToTimespec(ns)
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "utimensat", Path: p, Err: err}
	}
	return nil
}

// tempName returns a fresh temporary path in dir.
func tempName(dir string) (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return filepath.Join(dir, manifest.TempPrefix+hex.EncodeToString(b)), nil
}
