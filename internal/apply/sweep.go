package apply

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/fanout/fanout/internal/manifest"
)

// Sweep removes fanout's temporary files (names for which manifest.IsTemp
// is true) left under root by an interrupted Apply, and returns how many it
// removed. It also sweeps root's parent directory itself (not its other
// subdirectories), where a file task's temporary files live. Sweep never
// follows a symlink (it walks the tree as Apply does, one directory handle
// at a time, and removes with unlinkat) and never removes a directory. A
// missing root is not an error.
func Sweep(ctx context.Context, root string) (int, error) {
	root = filepath.Clean(root)
	dir := filepath.Dir(root)
	pfd, err := openat(unix.AT_FDCWD, dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if errors.Is(err, unix.ENOENT) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("sweep %s: %w", dir, &fs.PathError{Op: "open", Path: dir, Err: err})
	}
	defer unix.Close(pfd)
	n, err := sweepDir(ctx, pfd, dir, false)
	if err != nil {
		return n, fmt.Errorf("sweep %s: %w", dir, err)
	}
	fd, err := openat(pfd, filepath.Base(root), dirFlags, 0)
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR), errors.Is(err, unix.ELOOP):
		return n, nil // no root, a file task's root, or a symlink: nothing under it
	case err != nil:
		return n, fmt.Errorf("sweep %s: %w", root, &fs.PathError{Op: "open", Path: root, Err: err})
	}
	defer unix.Close(fd)
	m, err := sweepDir(ctx, fd, root, true)
	n += m
	if err != nil {
		return n, fmt.Errorf("sweep %s: %w", root, err)
	}
	return n, nil
}

// sweepDir removes the temporary files in the directory open as fd (osPath),
// and with deep in every directory below it, opened without following a
// symlink.
func sweepDir(ctx context.Context, fd int, osPath string, deep bool) (int, error) {
	des, err := readDir(fd, osPath)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, d := range des {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		name := d.Name()
		if d.IsDir() {
			if !deep {
				continue
			}
			sub, err := openat(fd, name, dirFlags, 0)
			if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
				continue // gone or swapped since: not a directory to sweep
			}
			if err != nil {
				return n, &fs.PathError{Op: "open", Path: filepath.Join(osPath, name), Err: err}
			}
			m, err := sweepDir(ctx, sub, filepath.Join(osPath, name), true)
			unix.Close(sub)
			n += m
			if err != nil {
				return n, err
			}
			continue
		}
		if !manifest.IsTemp(name) {
			continue
		}
		// unlinkat without AT_REMOVEDIR never removes a directory, even
		// one swapped in since the lstat.
		err = ignoringEINTR(func() error { return unix.Unlinkat(fd, name, 0) })
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EISDIR) {
			continue
		}
		if err != nil {
			return n, &fs.PathError{Op: "unlink", Path: filepath.Join(osPath, name), Err: err}
		}
		n++
	}
	return n, nil
}

// SyncFS flushes the file system that holds root (or, when root does not
// exist, its parent). After an interrupted Apply, renames the killed
// process made may not be durable yet, and a later Apply, finding those
// files already in place, has nothing to sync: call SyncFS before
// recording such a tree as held.
func SyncFS(root string) error {
	f, err := os.Open(root)
	if errors.Is(err, fs.ErrNotExist) {
		f, err = os.Open(filepath.Dir(root))
	}
	if err != nil {
		return fmt.Errorf("sync file system of %s: %w", root, err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("sync file system of %s: %w", root, err)
	}
	return nil
}
