package apply

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// operatorDir is the key in applier.dirs of the task root's parent
// directory. It belongs to the operator and is opened by path, following
// symlinks; every other key is the manifest path of a directory of the
// task, "." the root itself.
const operatorDir = ""

// loc is where an entry lives: the open directory that holds it and its name
// there.
type loc struct {
	dir  int    // handle of the directory holding the entry
	key  string // that directory's key in applier.dirs
	name string // the entry's name in it
	path string // the entry's OS path, for messages
}

// locate returns where the entry at manifest path p lives, opening (once per
// Apply) every directory from the task root down to its parent. For "." it
// is the root in the operator's directory.
func (a *applier) locate(p string) (loc, error) {
	key, name := operatorDir, filepath.Base(a.root)
	if p != "." {
		key, name = parent(p), p[strings.LastIndexByte(p, '/')+1:]
	}
	fd, err := a.dir(key)
	if err != nil {
		return loc{}, err
	}
	return loc{dir: fd, key: key, name: name, path: a.osPath(p)}, nil
}

// dir returns the open handle of directory key (see operatorDir), opening it
// and any ancestor not open yet. Below the operator's directory each
// component is opened relative to its parent's handle with O_NOFOLLOW, so a
// symlink anywhere in the tree is refused (syscall.ENOTDIR), and a handle,
// once open, stays the directory it was whatever is renamed later.
func (a *applier) dir(key string) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.dirLocked(key)
}

func (a *applier) dirLocked(key string) (int, error) {
	if fd, ok := a.dirs[key]; ok {
		return fd, nil
	}
	var (
		fd  int
		err error
	)
	switch key {
	case operatorDir:
		p := filepath.Dir(a.root)
		fd, err = openat(unix.AT_FDCWD, p, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			return -1, &fs.PathError{Op: "open directory", Path: p, Err: err}
		}
	default:
		up, name := operatorDir, filepath.Base(a.root)
		if key != "." {
			up, name = parent(key), key[strings.LastIndexByte(key, '/')+1:]
		}
		pfd, err := a.dirLocked(up)
		if err != nil {
			return -1, err
		}
		if fd, err = openDirAt(pfd, name, a.osPath(key)); err != nil {
			return -1, err
		}
	}
	a.dirs[key] = fd
	return fd, nil
}

// forget closes the handles of directory p and of every directory under it,
// which a removal is about to take away; their pending syncs go with them.
func (a *applier) forget(p string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for key, fd := range a.dirs {
		if key == operatorDir || !(p == "." || key == p || strings.HasPrefix(key, p+"/")) {
			continue
		}
		unix.Close(fd)
		delete(a.dirs, key)
		delete(a.touched, key)
		delete(a.metaDirs, key)
	}
}

// touch records that the entries of directory key changed, or its own
// metadata, so syncDirs fsyncs it.
func (a *applier) touch(key string) {
	a.mu.Lock()
	a.touched[key] = true
	a.mu.Unlock()
}

// metaChanged records that only the metadata of an entry of directory key
// changed (a file's or symlink's owner, mode or times), which no fsync of a
// directory makes durable.
func (a *applier) metaChanged(key string) {
	a.mu.Lock()
	a.metaDirs[key] = true
	a.mu.Unlock()
}

// syncDirs makes what Apply did durable: it fsyncs, once each, the
// directories whose entries or own metadata changed (renames, creations,
// removals, directory modes), and syncs once each filesystem holding a file
// or symlink whose metadata alone changed (one syncfs rather than an fsync
// per file: a mode change on a whole tree must not cost a disk flush per
// file). Fetched files were fsynced before their rename.
func (a *applier) syncDirs() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	var errs []error
	for key := range a.touched {
		if fd, ok := a.dirs[key]; ok {
			if err := ignoringEINTR(func() error { return unix.Fsync(fd) }); err != nil {
				errs = append(errs, fmt.Errorf("fsync directory %s: %w", a.osPath(key), err))
			} else if a.synced != nil {
				a.synced("fsync", a.osPath(key))
			}
		}
	}
	synced := map[uint64]bool{}
	for key := range a.metaDirs {
		fd, ok := a.dirs[key]
		if !ok {
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			errs = append(errs, fmt.Errorf("stat directory %s: %w", a.osPath(key), err))
			continue
		}
		if synced[st.Dev] {
			continue
		}
		synced[st.Dev] = true
		if err := ignoringEINTR(func() error { return unix.Syncfs(fd) }); err != nil {
			errs = append(errs, fmt.Errorf("sync the filesystem of %s: %w", a.osPath(key), err))
		} else if a.synced != nil {
			a.synced("syncfs", a.osPath(key))
		}
	}
	a.touched, a.metaDirs = map[string]bool{}, map[string]bool{}
	return errors.Join(errs...)
}

// close closes every directory handle.
func (a *applier) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for key, fd := range a.dirs {
		unix.Close(fd)
		delete(a.dirs, key)
	}
}

// parent returns the manifest path of p's parent directory ("." for
// top-level paths).
func parent(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return "."
	}
	return p[:i]
}
