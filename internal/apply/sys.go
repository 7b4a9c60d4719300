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

// The system calls below are retried on EINTR, as package os does.

// ignoringEINTR calls fn until it does not fail with EINTR.
func ignoringEINTR(fn func() error) error {
	for {
		if err := fn(); err != unix.EINTR {
			return err
		}
	}
}

// openat opens name relative to the directory dirfd.
func openat(dirfd int, name string, flags int, mode uint32) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, flags|unix.O_CLOEXEC, mode)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// lstatAt stats name in the directory dirfd without following a symlink.
func lstatAt(dirfd int, name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := ignoringEINTR(func() error { return unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) })
	return st, err
}

// dirFlags open a directory to walk through or act in, never a symlink.
const dirFlags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW

// openDirAt opens the directory name in dirfd, never following a symlink.
// A symlink, or anything else that is not a directory, is an error naming
// osPath and wrapping syscall.ENOTDIR.
func openDirAt(dirfd int, name, osPath string) (int, error) {
	fd, err := openat(dirfd, name, dirFlags, 0)
	if err == nil {
		return fd, nil
	}
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
		what := "not a directory"
		if st, serr := lstatAt(dirfd, name); serr == nil {
			what = kindOf(st.Mode)
		}
		return -1, fmt.Errorf("refusing to write under %s: it is a %s: %w", osPath, what, syscall.ENOTDIR)
	}
	return -1, &fs.PathError{Op: "open directory", Path: osPath, Err: err}
}

// setTimes sets the access and modification times of name in dirfd to ns
// (Unix nanoseconds), without following a symlink at name.
func setTimes(dirfd int, name string, ns int64, osPath string) error {
	ts := unix.NsecToTimespec(ns)
	err := ignoringEINTR(func() error {
		return unix.UtimesNanoAt(dirfd, name, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
	})
	if err != nil {
		return &fs.PathError{Op: "utimensat", Path: osPath, Err: err}
	}
	return nil
}

// sysMode converts permission bits, setuid, setgid and sticky to the
// system's mode bits.
func sysMode(m fs.FileMode) uint32 {
	mode := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		mode |= unix.S_ISUID
	}
	if m&fs.ModeSetgid != 0 {
		mode |= unix.S_ISGID
	}
	if m&fs.ModeSticky != 0 {
		mode |= unix.S_ISVTX
	}
	return mode
}

// kindOf names the type of a stat mode in manifest terms.
func kindOf(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFLNK:
		return string(manifest.Symlink)
	case unix.S_IFDIR:
		return string(manifest.Dir)
	case unix.S_IFREG:
		return string(manifest.File)
	}
	return "special file"
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

// tempName returns a fresh temporary base name.
func tempName() (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return manifest.TempPrefix + hex.EncodeToString(b), nil
}

// readDir returns the entries of the directory open as dirfd, through a
// handle of its own, so dirfd's offset is left alone. Their types come from
// the directory itself where the filesystem gives them.
func readDir(dirfd int, osPath string) ([]fs.DirEntry, error) {
	fd, err := openat(dirfd, ".", dirFlags, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open directory", Path: osPath, Err: err}
	}
	f := os.NewFile(uintptr(fd), osPath)
	defer f.Close()
	des, err := f.ReadDir(-1)
	if err != nil {
		return nil, fmt.Errorf("read directory %s: %w", osPath, err)
	}
	return des, nil
}

// removeAt removes name from the directory dirfd, with its whole subtree
// when it is a directory. It never follows a symlink: one at name or below
// is removed itself. A missing entry is not an error.
func removeAt(dirfd int, name, osPath string) error {
	err := ignoringEINTR(func() error { return unix.Unlinkat(dirfd, name, 0) })
	switch {
	case err == nil, errors.Is(err, unix.ENOENT):
		return nil
	case !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM):
		return &fs.PathError{Op: "unlink", Path: osPath, Err: err}
	}
	// A directory (Linux says EISDIR; POSIX allows EPERM).
	fd, err := openat(dirfd, name, dirFlags, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.ENOTDIR):
		// Swapped for a non-directory since: remove that.
		if err := ignoringEINTR(func() error { return unix.Unlinkat(dirfd, name, 0) }); err != nil && !errors.Is(err, unix.ENOENT) {
			return &fs.PathError{Op: "unlink", Path: osPath, Err: err}
		}
		return nil
	case err != nil:
		return &fs.PathError{Op: "open directory", Path: osPath, Err: err}
	}
	defer unix.Close(fd)
	// Entries created while we remove make rmdir fail with ENOTEMPTY:
	// empty the directory again, a few times at most.
	for range 3 {
		des, err := readDir(fd, osPath)
		if err != nil {
			return err
		}
		for _, d := range des {
			if err := removeAt(fd, d.Name(), filepath.Join(osPath, d.Name())); err != nil {
				return err
			}
		}
		err = ignoringEINTR(func() error { return unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR) })
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.ENOTEMPTY) {
			return &fs.PathError{Op: "rmdir", Path: osPath, Err: err}
		}
	}
	return &fs.PathError{Op: "rmdir", Path: osPath, Err: unix.ENOTEMPTY}
}
