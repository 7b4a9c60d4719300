package apply

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/fanout/fanout/internal/manifest"
)

// A part file is the temporary file of a file built by an Assembler (a
// format 3 file of several chunks). Unlike other temporary files its name
// is not random but derived from the file's path and content hash, and it
// is not removed when its Apply is interrupted (the context cancelled:
// shutdown, a lost lease, a newer generation) nor, of course, when the
// process is killed: the next Apply that fetches the same content at the
// same path opens it again, and its Assembler keeps each chunk whose bytes
// still hash right. Nothing in it is trusted: a torn write, a hole or a
// stale byte fails its chunk's hash and is fetched again. Sweep removes
// every part file but those of the entries it is told to keep.
const partTag = "part-"

// partName is the base name of e's part file: a temporary name (see
// manifest.IsTemp), so walks skip it and Sweep may remove it, that names
// e's path and content. Two entries of one directory never share it.
func partName(e manifest.Entry) string {
	h := manifest.NewHash()
	h.Write([]byte(e.Path))
	h.Write([]byte{0})
	h.Write([]byte(e.Hash))
	return manifest.TempPrefix + partTag + hex.EncodeToString(h.Sum(nil)[:16])
}

// PartPath returns the OS path of the part file of e under the task root
// root: in the directory that holds e (root's parent for a single-file
// task, whose entry is "."), as Apply writes it.
func PartPath(root string, e manifest.Entry) string {
	a := applier{root: filepath.Clean(root)}
	return filepath.Join(filepath.Dir(a.osPath(e.Path)), partName(e))
}

// openPart opens the part file name in l's directory for reading and
// writing, creating it if there is none. It reuses an existing one only if
// it is a regular file that this process's user owns, that no other user
// may read or write and that has no other link (so no hard link can make
// Apply write into another file); anything else under that name is
// removed (never followed: a symlink there is unlinked itself) and the file
// created afresh. resumed reports that an existing file was kept, its
// content unverified.
func openPart(l loc, name string) (fd int, resumed bool, err error) {
	fd, err = openat(l.dir, name, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err == nil {
		var st unix.Stat_t
		if err = unix.Fstat(fd, &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFREG &&
			st.Uid == uint32(unix.Geteuid()) && st.Nlink == 1 && st.Mode&0o077 == 0 {
			if err = unix.SetNonblock(fd, false); err == nil {
				return fd, true, nil
			}
		}
		unix.Close(fd)
	}
	if err == nil || !errors.Is(err, unix.ENOENT) {
		// Not a part file we can trust, or one we cannot open: out of the
		// way. unlinkat without AT_REMOVEDIR never removes a directory:
		// the create below then fails with EEXIST and says so.
		_ = ignoringEINTR(func() error { return unix.Unlinkat(l.dir, name, 0) })
	}
	fd, err = openat(l.dir, name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		p := filepath.Join(filepath.Dir(l.path), name)
		return -1, false, fmt.Errorf("create temporary file: %w", &fs.PathError{Op: "open", Path: p, Err: err})
	}
	return fd, false, nil
}
