package apply

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fanout/fanout/internal/manifest"
)

// Swept is what Sweep did.
type Swept struct {
	// Removed counts the temporary files removed.
	Removed int
	// Kept holds the OS paths (as PartPath gives them) of the part files
	// kept for the entries Sweep was told to keep.
	Kept map[string]bool
}

// Sweep removes fanout's temporary files (names for which manifest.IsTemp
// is true) left under root by an interrupted Apply, but for the part files
// (see PartPath) of the entries in keep: those an Apply about to run will
// resume. It also sweeps root's parent directory itself (not its other
// subdirectories), where a file task's temporary files live: there only
// those not modified for parentMinAge, as the directory may hold other
// tasks' roots and their transfers. Sweep never
// follows a symlink (it walks the tree as Apply does, one directory handle
// at a time, and removes with unlinkat) and never removes a directory. A
// missing root is not an error.
func Sweep(ctx context.Context, root string, keep []manifest.Entry) (Swept, error) {
	root = filepath.Clean(root)
	sw := &sweeper{ctx: ctx, keep: map[string]bool{}, out: Swept{Kept: map[string]bool{}}}
	for _, e := range keep {
		sw.keep[PartPath(root, e)] = true
	}
	dir := filepath.Dir(root)
	pfd, err := openat(unix.AT_FDCWD, dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if errors.Is(err, unix.ENOENT) {
		return sw.out, nil
	}
	if err != nil {
		return sw.out, fmt.Errorf("sweep %s: %w", dir, &fs.PathError{Op: "open", Path: dir, Err: err})
	}
	defer unix.Close(pfd)
	if err := sw.dir(pfd, dir, false); err != nil {
		return sw.out, fmt.Errorf("sweep %s: %w", dir, err)
	}
	fd, err := openat(pfd, filepath.Base(root), dirFlags, 0)
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR), errors.Is(err, unix.ELOOP):
		return sw.out, nil // no root, a file task's root, or a symlink: nothing under it
	case err != nil:
		return sw.out, fmt.Errorf("sweep %s: %w", root, &fs.PathError{Op: "open", Path: root, Err: err})
	}
	defer unix.Close(fd)
	if err := sw.dir(fd, root, true); err != nil {
		return sw.out, fmt.Errorf("sweep %s: %w", root, err)
	}
	return sw.out, nil
}

// sweeper is the state of one Sweep.
type sweeper struct {
	ctx  context.Context
	keep map[string]bool // OS paths of the part files to keep
	out  Swept
}

// dir removes the temporary files in the directory open as fd (osPath),
// and with deep in every directory below it, opened without following a
// symlink.
func (sw *sweeper) dir(fd int, osPath string, deep bool) error {
	des, err := readDir(fd, osPath)
	if err != nil {
		return err
	}
	for _, d := range des {
		if err := sw.ctx.Err(); err != nil {
			return err
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
				return &fs.PathError{Op: "open", Path: filepath.Join(osPath, name), Err: err}
			}
			err = sw.dir(sub, filepath.Join(osPath, name), true)
			unix.Close(sub)
			if err != nil {
				return err
			}
			continue
		}
		if !manifest.IsTemp(name) {
			continue
		}
		if p := filepath.Join(osPath, name); sw.keep[p] && d.Type().IsRegular() {
			sw.out.Kept[p] = true // openPart checks it further
			continue
		}
		if !deep && !stale(fd, name) {
			// Root's parent is shared with other tasks' roots (named
			// tasks side by side, file tasks in one directory): a
			// temporary file there may be another task's, in flight.
			continue
		}
		// unlinkat without AT_REMOVEDIR never removes a directory, even
		// one swapped in since the lstat.
		err = ignoringEINTR(func() error { return unix.Unlinkat(fd, name, 0) })
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EISDIR) {
			continue
		}
		if err != nil {
			return &fs.PathError{Op: "unlink", Path: filepath.Join(osPath, name), Err: err}
		}
		sw.out.Removed++
	}
	return nil
}

// parentMinAge is how old a temporary file in a root's parent directory
// must be (not modified since) before Sweep removes it: one that is
// younger may be another task's transfer in flight.
const parentMinAge = time.Hour

// stale reports whether the file name in the directory open as fd was
// last modified more than parentMinAge ago (false when it cannot tell).
func stale(fd int, name string) bool {
	var st unix.Stat_t
	if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return false
	}
	return time.Since(time.Unix(st.Mtim.Unix())) > parentMinAge
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
