package apply

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/fanout/fanout/internal/manifest"
)

// checkParents verifies that every directory from the task root down to the
// parent of manifest path p is a real directory, not a symlink or anything
// else, so that nothing created at p can land outside the tree. The root's
// own parent, where a file task's root lives, belongs to the operator and is
// not checked.
func (a *applier) checkParents(p string) error {
	if p == "." {
		return nil
	}
	dir := a.root
	if err := a.realDir(dir); err != nil {
		return err
	}
	parts := strings.Split(p, "/")
	for _, c := range parts[:len(parts)-1] {
		dir = filepath.Join(dir, c)
		if err := a.realDir(dir); err != nil {
			return err
		}
	}
	return nil
}

// realDir checks, once per Apply, that dir is a directory and not a symlink.
// A symlink or file is reported as syscall.ENOTDIR.
func (a *applier) realDir(dir string) error {
	a.mu.Lock()
	ok := a.verified[dir]
	a.mu.Unlock()
	if ok {
		return nil
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("check directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("refusing to write under %s: it is a %s: %w", dir, kind(fi), syscall.ENOTDIR)
	}
	a.markDir(dir)
	return nil
}

// markDir records dir as a verified real directory.
func (a *applier) markDir(dir string) {
	a.mu.Lock()
	a.verified[dir] = true
	a.mu.Unlock()
}

// forget drops the verified directories at or under a removed OS path.
func (a *applier) forget(p string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for d := range a.verified {
		if d == p || strings.HasPrefix(d, p+string(filepath.Separator)) {
			delete(a.verified, d)
		}
	}
}

// touch records that an entry of dir changed, for syncDirs.
func (a *applier) touch(dir string) {
	a.mu.Lock()
	a.touched[dir] = true
	a.mu.Unlock()
}

// syncDirs fsyncs, once each, the directories whose entries changed, so the
// renames, creations and removals are durable.
func (a *applier) syncDirs() error {
	for d := range a.touched {
		if err := syncDir(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("fsync directory %s: %w", d, err)
		}
	}
	return nil
}

// syncDir fsyncs a directory. It may follow a symlink: a file task's root
// sits in the operator's directory, which may be reached through one, and
// opening a directory to fsync it writes nothing.
func syncDir(dir string) error {
	f, err := os.OpenFile(dir, os.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// kind names the type of fi in manifest terms.
func kind(fi fs.FileInfo) string {
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return string(manifest.Symlink)
	case fi.IsDir():
		return string(manifest.Dir)
	case fi.Mode().IsRegular():
		return string(manifest.File)
	}
	return "special file"
}
