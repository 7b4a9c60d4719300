package apply

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// operatorDir is the key in applier.dirs of the task root's parent
// directory. It belongs to the operator and is opened by path, following
// symlinks; every other key is the manifest path of a directory of the
// task, "." the root itself.
const operatorDir = ""

// maxOpenDirs bounds the directory handles an Apply keeps open: a tree may
// have more directories than the process may open files. Past it, the
// handles least recently used and not in use are closed (a directory with
// pending changes is fsynced first) and reopened, from the root down, if
// needed again.
const maxOpenDirs = 1024

// dirHandle is an open directory of the task.
type dirHandle struct {
	fd   int
	refs int    // holders of fd right now: it is not closed while any
	used uint64 // applier.clock when last acquired
}

// loc is where an entry lives: the open directory that holds it and its name
// there. Its holder releases it (applier.release) when done with dir.
type loc struct {
	dir  int    // handle of the directory holding the entry
	key  string // that directory's key in applier.dirs
	name string // the entry's name in it
	path string // the entry's OS path, for messages
}

// locate returns where the entry at manifest path p lives, holding the
// handle of its directory (see acquire). For "." it is the root in the
// operator's directory.
func (a *applier) locate(p string) (loc, error) {
	key, name := operatorDir, filepath.Base(a.root)
	if p != "." {
		key, name = parent(p), p[strings.LastIndexByte(p, '/')+1:]
	}
	fd, err := a.acquire(key)
	if err != nil {
		return loc{}, err
	}
	return loc{dir: fd, key: key, name: name, path: a.osPath(p)}, nil
}

// acquire returns the handle of directory key (see operatorDir), opening it
// and any ancestor not open. Below the operator's directory each component
// is opened relative to its parent's handle with O_NOFOLLOW, so a symlink
// anywhere in the tree is refused (syscall.ENOTDIR), and a handle, once
// open, stays the directory it was whatever is renamed later. The handle
// stays open until release.
func (a *applier) acquire(key string) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	h, err := a.openLocked(key)
	if err != nil {
		return -1, err
	}
	h.refs++
	a.clock++
	h.used = a.clock
	if len(a.dirs) > a.maxDirs {
		a.evictLocked()
	}
	return h.fd, nil
}

// release gives back a handle from acquire or locate.
func (a *applier) release(key string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if h, ok := a.dirs[key]; ok {
		h.refs--
	}
}

// openLocked returns the handle of directory key, opening it if need be;
// a.mu is held, so no handle it uses can be closed meanwhile.
func (a *applier) openLocked(key string) (*dirHandle, error) {
	if h, ok := a.dirs[key]; ok {
		return h, nil
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
			return nil, &fs.PathError{Op: "open directory", Path: p, Err: err}
		}
	default:
		up, name := operatorDir, filepath.Base(a.root)
		if key != "." {
			up, name = parent(key), key[strings.LastIndexByte(key, '/')+1:]
		}
		ph, err := a.openLocked(up)
		if err != nil {
			return nil, err
		}
		if fd, err = openDirAt(ph.fd, name, a.osPath(key)); err != nil {
			return nil, err
		}
	}
	h := &dirHandle{fd: fd}
	a.dirs[key] = h
	return h, nil
}

// evictLocked closes the least recently used handles that nobody holds,
// down to three quarters of the limit, fsyncing first those whose
// directory changed. The root and its parent stay open.
func (a *applier) evictLocked() {
	var idle []string
	for key, h := range a.dirs {
		if h.refs == 0 && key != operatorDir && key != "." {
			idle = append(idle, key)
		}
	}
	slices.SortFunc(idle, func(x, y string) int { return cmp.Compare(a.dirs[x].used, a.dirs[y].used) })
	for _, key := range idle[:max(0, min(len(idle), len(a.dirs)-a.maxDirs*3/4))] {
		if a.touched[key] {
			a.fsyncLocked(key)
		}
		unix.Close(a.dirs[key].fd)
		delete(a.dirs, key)
	}
}

// forget closes the handles of directory p and of every directory under it,
// which a removal is about to take away; their pending fsyncs go with them.
// It runs between fetches, when no handle is held.
func (a *applier) forget(p string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for key, h := range a.dirs {
		if key == operatorDir || !(p == "." || key == p || strings.HasPrefix(key, p+"/")) {
			continue
		}
		unix.Close(h.fd)
		delete(a.dirs, key)
		delete(a.touched, key)
	}
}

// touch records that the entries of directory key changed, or its own
// metadata, so that it is fsynced before Apply returns.
func (a *applier) touch(key string) {
	a.mu.Lock()
	a.touched[key] = true
	a.mu.Unlock()
}

// metaChanged records that only the metadata of an entry of the directory
// open as dirfd changed (a file's or symlink's owner, mode or times), which
// no fsync of a directory makes durable: its filesystem is synced before
// Apply returns.
func (a *applier) metaChanged(dirfd int, osPath string) {
	var st unix.Stat_t
	err := unix.Fstat(dirfd, &st)
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		a.syncErrs = append(a.syncErrs, fmt.Errorf("stat directory %s: %w", osPath, err))
		return
	}
	if _, ok := a.metaFS[st.Dev]; ok {
		return
	}
	fd, err := unix.Dup(dirfd) // the filesystem's handle, whatever is evicted
	if err != nil {
		a.syncErrs = append(a.syncErrs, fmt.Errorf("dup directory %s: %w", osPath, err))
		return
	}
	unix.CloseOnExec(fd)
	a.metaFS[st.Dev] = metaFS{fd: fd, path: osPath}
}

// metaFS is a filesystem to sync: a handle on it and a path for messages.
type metaFS struct {
	fd   int
	path string
}

// fsyncLocked fsyncs the open directory key.
func (a *applier) fsyncLocked(key string) {
	fd := a.dirs[key].fd
	if err := ignoringEINTR(func() error { return unix.Fsync(fd) }); err != nil {
		a.syncErrs = append(a.syncErrs, fmt.Errorf("fsync directory %s: %w", a.osPath(key), err))
	} else if a.synced != nil {
		a.synced("fsync", a.osPath(key))
	}
	delete(a.touched, key)
}

// syncDirs makes what Apply did durable: it fsyncs, once each, the
// directories whose entries or own metadata changed (renames, creations,
// removals, directory modes) and are not fsynced yet, and syncs once each
// filesystem holding a file or symlink whose metadata alone changed (one
// syncfs rather than an fsync per file: a mode change on a whole tree must
// not cost a disk flush per file). Fetched files were synced before their
// rename (see incoming.end and durableBatch). It returns every failure to sync, since the Apply began.
func (a *applier) syncDirs() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for key := range a.touched {
		if _, ok := a.dirs[key]; ok {
			a.fsyncLocked(key)
		}
	}
	for dev, m := range a.metaFS {
		if err := ignoringEINTR(func() error { return unix.Syncfs(m.fd) }); err != nil {
			a.syncErrs = append(a.syncErrs, fmt.Errorf("sync the filesystem of %s: %w", m.path, err))
		} else if a.synced != nil {
			a.synced("syncfs", m.path)
		}
		unix.Close(m.fd)
		delete(a.metaFS, dev)
	}
	err := errors.Join(a.syncErrs...)
	a.syncErrs = nil
	return err
}

// close closes every handle.
func (a *applier) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for key, h := range a.dirs {
		unix.Close(h.fd)
		delete(a.dirs, key)
	}
	for dev, m := range a.metaFS {
		unix.Close(m.fd)
		delete(a.metaFS, dev)
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
