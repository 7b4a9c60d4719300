package apply

import (
	"errors"
	"fmt"
	"io/fs"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/fanout/fanout/internal/manifest"
)

// do runs one action other than a fetch.
func (a *applier) do(act manifest.Action) error {
	e := act.Entry
	var err error
	switch act.Op {
	case manifest.OpRemove:
		err = a.remove(e)
	case manifest.OpMkdir:
		err = a.mkdir(e)
	case manifest.OpSymlink:
		err = a.symlink(e)
	case manifest.OpMeta:
		err = a.meta(e)
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", act.Op, e.Path, err)
	}
	a.log.WithField("path", e.Path).Debugf("%s done", act.Op)
	a.done(act.Op, 0)
	return nil
}

// remove deletes the entry at e.Path, a directory with its whole subtree. A
// symlink there or below is removed itself, never followed.
func (a *applier) remove(e manifest.Entry) error {
	l, err := a.locate(e.Path)
	if err != nil {
		return err
	}
	defer a.release(l.key)
	a.forget(e.Path)
	if err := removeAt(l.dir, l.name, l.path); err != nil {
		return err
	}
	a.touch(l.key)
	return nil
}

// mkdir creates the directory e.Path, or accepts a real directory already
// there (its OpMeta sets its attributes). A new directory gets its owner,
// then a mode that stays owner-writable until its OpMeta sets the final one,
// so its children can be written even when that mode is read-only.
func (a *applier) mkdir(e manifest.Entry) error {
	l, err := a.locate(e.Path)
	if err != nil {
		return err
	}
	defer a.release(l.key)
	err = ignoringEINTR(func() error { return unix.Mkdirat(l.dir, l.name, 0o700) })
	if errors.Is(err, unix.EEXIST) {
		st, err := lstatAt(l.dir, l.name)
		if err != nil {
			return &fs.PathError{Op: "lstat", Path: l.path, Err: err}
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return fmt.Errorf("%s exists and is a %s: %w", l.path, kindOf(st.Mode), fs.ErrExist)
		}
		if _, err := a.acquire(e.Path); err != nil {
			return err
		}
		a.release(e.Path)
		return nil
	}
	if err != nil {
		return &fs.PathError{Op: "mkdir", Path: l.path, Err: err}
	}
	a.touch(l.key)
	fd, err := a.acquire(e.Path)
	if err != nil {
		return err
	}
	defer a.release(e.Path)
	x := a.expect(e)
	if err := a.chown(fd, x, l.path); err != nil {
		return err
	}
	// The mode beats the umask and sets setgid, which children inherit.
	if err := a.chmod(fd, x, 0o700, l.path); err != nil {
		return err
	}
	a.touch(e.Path)
	return nil
}

// symlink creates a symlink, with its owner, at a temporary name next to
// e.Path and renames it over e.Path, so the entry is replaced atomically.
func (a *applier) symlink(e manifest.Entry) error {
	l, err := a.locate(e.Path)
	if err != nil {
		return err
	}
	defer a.release(l.key)
	if st, err := lstatAt(l.dir, l.name); err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return fmt.Errorf("%s is a directory: %w", l.path, syscall.EISDIR)
	}
	tmp, err := tempName()
	if err != nil {
		return err
	}
	if err := ignoringEINTR(func() error { return unix.Symlinkat(e.Target, l.dir, tmp) }); err != nil {
		return &fs.PathError{Op: "symlink", Path: l.path, Err: err}
	}
	err = a.lchown(l, tmp, a.expect(e))
	if err == nil {
		err = ignoringEINTR(func() error { return unix.Renameat(l.dir, tmp, l.dir, l.name) })
		if err != nil {
			err = &fs.PathError{Op: "rename", Path: l.path, Err: err}
		}
	}
	if err != nil {
		unix.Unlinkat(l.dir, tmp, 0)
		return err
	}
	a.touch(l.key)
	return nil
}

// meta sets the owner (with Options.Owner.Chown), mode and mtime of an
// existing entry of e's type. Each is set through a handle whose type was
// checked, or with a call that does not follow a symlink, so none ever goes
// through one. A symlink gets only its owner and mtime: Linux ignores a
// symlink's mode.
func (a *applier) meta(e manifest.Entry) error {
	x := a.expect(e)
	if e.Type == manifest.Dir {
		return a.metaDir(e, x)
	}
	l, err := a.locate(e.Path)
	if err != nil {
		return err
	}
	defer a.release(l.key)
	switch e.Type {
	case manifest.File:
		err = a.metaFile(l, x)
	case manifest.Symlink:
		st, serr := lstatAt(l.dir, l.name)
		switch {
		case serr != nil:
			err = &fs.PathError{Op: "lstat", Path: l.path, Err: serr}
		case st.Mode&unix.S_IFMT != unix.S_IFLNK:
			err = fmt.Errorf("%s is a %s, want a symlink", l.path, kindOf(st.Mode))
		default:
			err = a.lchown(l, l.name, x)
		}
	}
	if err != nil {
		return err
	}
	if err := setTimes(l.dir, l.name, e.MTime, l.path); err != nil {
		return err
	}
	a.metaChanged(l.dir, a.osPath(l.key))
	return nil
}

// metaDir sets a directory's attributes through its handle, which the
// final fsync of Apply makes durable.
func (a *applier) metaDir(e, x manifest.Entry) error {
	fd, err := a.acquire(e.Path)
	if err != nil {
		return err
	}
	defer a.release(e.Path)
	l, err := a.locate(e.Path)
	if err != nil {
		return err
	}
	defer a.release(l.key)
	if err := a.chown(fd, x, l.path); err != nil {
		return err
	}
	if err := a.chmod(fd, x, 0, l.path); err != nil {
		return err
	}
	if err := setTimes(l.dir, l.name, e.MTime, l.path); err != nil {
		return err
	}
	a.touch(e.Path)
	return nil
}

// metaFile sets a regular file's owner and mode through a handle opened
// without following a symlink (and without blocking, should it be a fifo)
// and checked to be a regular file.
func (a *applier) metaFile(l loc, x manifest.Entry) error {
	fd, err := openat(l.dir, l.name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if errors.Is(err, unix.EACCES) {
		return a.metaFileByName(l, x, err)
	}
	if errors.Is(err, unix.ELOOP) {
		return fmt.Errorf("%s is a symlink, want a file", l.path)
	}
	if err != nil {
		return &fs.PathError{Op: "open", Path: l.path, Err: err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return &fs.PathError{Op: "fstat", Path: l.path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%s is a %s, want a file", l.path, kindOf(st.Mode))
	}
	if err := a.chown(fd, x, l.path); err != nil {
		return err
	}
	return a.chmod(fd, x, 0, l.path)
}

// metaFileByName sets the owner and mode of a file this process may not
// open (not root, and no read permission on a file it owns) by name, never
// following a symlink: fchmodat with AT_SYMLINK_NOFOLLOW needs Linux 6.6;
// before that the open's error openErr is returned.
func (a *applier) metaFileByName(l loc, x manifest.Entry, openErr error) error {
	st, err := lstatAt(l.dir, l.name)
	if err != nil {
		return &fs.PathError{Op: "lstat", Path: l.path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%s is a %s, want a file", l.path, kindOf(st.Mode))
	}
	if err := a.lchown(l, l.name, x); err != nil {
		return err
	}
	if a.opts.Owner.Chown && x.HasOwner() {
		if st, err = lstatAt(l.dir, l.name); err != nil {
			return &fs.PathError{Op: "lstat", Path: l.path, Err: err}
		}
	}
	mode := a.settle(x, 0, st.Uid, st.Gid)
	err = ignoringEINTR(func() error { return unix.Fchmodat(l.dir, l.name, sysMode(mode), unix.AT_SYMLINK_NOFOLLOW) })
	if errors.Is(err, unix.EOPNOTSUPP) {
		return &fs.PathError{Op: "open", Path: l.path, Err: openErr}
	}
	if err != nil {
		return &fs.PathError{Op: "chmod", Path: l.path, Err: err}
	}
	return nil
}

// chown gives the entry open as fd the owner and group x carries, when the
// policy sets owners. It comes before chmod: a chown clears setuid and
// setgid bits.
func (a *applier) chown(fd int, x manifest.Entry, osPath string) error {
	if !a.opts.Owner.Chown || !x.HasOwner() {
		return nil
	}
	uid, _ := x.UID.Value()
	gid, _ := x.GID.Value()
	if err := ignoringEINTR(func() error { return unix.Fchown(fd, int(uid), int(gid)) }); err != nil {
		return &fs.PathError{Op: "chown", Path: osPath, Err: err}
	}
	return nil
}

// lchown gives name in l's directory, a symlink or any entry, the owner x
// carries when the policy sets owners, without following a symlink.
func (a *applier) lchown(l loc, name string, x manifest.Entry) error {
	if !a.opts.Owner.Chown || !x.HasOwner() {
		return nil
	}
	uid, _ := x.UID.Value()
	gid, _ := x.GID.Value()
	err := ignoringEINTR(func() error {
		return unix.Fchownat(l.dir, name, int(uid), int(gid), unix.AT_SYMLINK_NOFOLLOW)
	})
	if err != nil {
		return &fs.PathError{Op: "chown", Path: l.path, Err: err}
	}
	return nil
}

// chmod sets the mode of the entry open as fd to x's (plus extra), as
// settle allows for the owner it has now.
func (a *applier) chmod(fd int, x manifest.Entry, extra fs.FileMode, osPath string) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return &fs.PathError{Op: "fstat", Path: osPath, Err: err}
	}
	mode := a.settle(x, extra, st.Uid, st.Gid)
	if err := ignoringEINTR(func() error { return unix.Fchmod(fd, sysMode(mode)) }); err != nil {
		return &fs.PathError{Op: "chmod", Path: osPath, Err: err}
	}
	return nil
}

// settle returns the mode to give an entry expected as x (plus extra) that
// is owned by uid and gid: x's mode, less setuid and setgid unless x carries
// that very owner (manifest.KeepsSetID). Expect has already cleared them
// where it could foresee the owner; this is the last check, on the owner the
// entry really has, so they are never set on an entry of another owner.
func (a *applier) settle(x manifest.Entry, extra fs.FileMode, uid, gid uint32) fs.FileMode {
	mode := x.Mode | extra
	const setID = fs.ModeSetuid | fs.ModeSetgid
	if mode&setID != 0 && !manifest.KeepsSetID(x, int64(uid), int64(gid)) {
		a.log.WithField("path", x.Path).WithField("uid", uid).WithField("gid", gid).
			Warn("not setting setuid or setgid: the entry's owner here is not the manifest's")
		mode &^= setID
	}
	return mode
}
