package manifest

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"unicode/utf8"

	"lukechampine.com/blake3"
)

// Options tunes Build.
type Options struct {
	// Cache, when set, supplies hashes of files whose size, mtime, inode
	// and ctime are unchanged, and records the hashes Build computes. With
	// Hash off, a file whose hash the cache holds still gets it (nothing is
	// read): FillHashes then has only the cache misses left to look at.
	Cache *Cache
	// Hash computes file hashes. A minion's scan of its own tree leaves it
	// off and hashes only what it must compare (see FillHashes).
	Hash bool
	// Warn is told about entries that are skipped: special files (devices,
	// sockets, fifos), names that are not valid UTF-8 or fail ValidPath, and
	// symlinks whose target is not valid UTF-8. path is slash-separated and
	// relative to root, like Entry.Path (it may hold invalid UTF-8).
	Warn func(path string, err error)
	// Temp is told about fanout temporary files (see IsTemp), by path
	// relative to root like Warn; they are never entries, and a directory
	// with a temporary name is not descended into.
	Temp func(path string)
}

// NewHash returns the content hash fanout uses: BLAKE3-256.
func NewHash() hash.Hash { return blake3.New(32, nil) }

// Build walks the task at root (a directory or a regular file), never
// following symlinks, and returns its manifest in tree order; entry "."
// describes root itself. Every entry carries its owner and group, by id and
// by name (looked up once per id; an id without a name here has none), so
// the manifest is in format 2; see Manifest.EncodeFormat. A root that does not exist yields an empty
// manifest and no error; a root that is a symlink or a special file is an
// error. ctx is checked between entries.
func Build(ctx context.Context, root string, opts Options) (*Manifest, error) {
	fi, err := os.Lstat(root)
	if errors.Is(err, fs.ErrNotExist) {
		return &Manifest{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("stat task root: %w", err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return nil, fmt.Errorf("task root %s is a symlink", root)
	}
	if !fi.IsDir() && !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("task root %s is a special file (%s)", root, fi.Mode().Type())
	}
	b := builder{ctx: ctx, opts: opts}
	if err := b.add(root, ".", fi); err != nil {
		return nil, err
	}
	if fi.IsDir() {
		if err := b.walk(root, "."); err != nil {
			return nil, err
		}
	}
	m := &Manifest{Entries: b.entries}
	m.Sort()
	return m, nil
}

type builder struct {
	ctx     context.Context
	opts    Options
	entries []Entry
	names   ownerNames
}

func (b *builder) warn(p string, err error) {
	if b.opts.Warn != nil {
		b.opts.Warn(p, err)
	}
}

func join(dir, name string) string {
	if dir == "." {
		return name
	}
	return dir + "/" + name
}

func (b *builder) walk(osDir, rel string) error {
	if err := b.ctx.Err(); err != nil {
		return err
	}
	des, err := os.ReadDir(osDir)
	if err != nil {
		return fmt.Errorf("read directory %s: %w", osDir, err)
	}
	for _, de := range des {
		if err := b.ctx.Err(); err != nil {
			return err
		}
		name := de.Name()
		p := join(rel, name)
		osPath := filepath.Join(osDir, name)
		if IsTemp(name) {
			if b.opts.Temp != nil {
				b.opts.Temp(p)
			}
			continue
		}
		if !utf8.ValidString(name) {
			b.warn(p, errors.New("name is not valid UTF-8; skipped"))
			continue
		}
		if err := ValidPath(p); err != nil {
			b.warn(p, fmt.Errorf("%w; skipped", err))
			continue
		}
		fi, err := os.Lstat(osPath)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed while we walked
		}
		if err != nil {
			return fmt.Errorf("stat %s: %w", osPath, err)
		}
		if err := b.add(osPath, p, fi); err != nil {
			return err
		}
		if fi.IsDir() {
			if err := b.walk(osPath, p); err != nil {
				return err
			}
		}
	}
	return nil
}

func (b *builder) add(osPath, rel string, fi fs.FileInfo) error {
	e := Entry{Path: rel, Mode: fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky), MTime: fi.ModTime().UnixNano()}
	switch {
	case fi.IsDir():
		e.Type = Dir
	case fi.Mode().IsRegular():
		e.Type = File
		e.Size = fi.Size()
		if b.opts.Hash {
			h, err := cachedHash(b.ctx, osPath, fi, b.opts.Cache)
			if err != nil {
				return err
			}
			e.Hash = h
		} else if b.opts.Cache != nil {
			e.Hash, _ = b.opts.Cache.Get(osPath, fi)
		}
	case fi.Mode()&fs.ModeSymlink != 0:
		t, err := os.Readlink(osPath)
		if err != nil {
			return fmt.Errorf("read symlink %s: %w", osPath, err)
		}
		if !utf8.ValidString(t) {
			b.warn(rel, errors.New("symlink target is not valid UTF-8; skipped"))
			return nil
		}
		e.Type = Symlink
		e.Mode = 0o777
		e.Target = t
	default:
		b.warn(rel, fmt.Errorf("special file (%s) skipped", fi.Mode().Type()))
		return nil
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		e.User, e.Group, e.UID, e.GID = b.names.owner(st.Uid, st.Gid)
	}
	b.entries = append(b.entries, e)
	return nil
}

func cachedHash(ctx context.Context, osPath string, fi fs.FileInfo, c *Cache) (string, error) {
	if c != nil {
		if h, ok := c.Get(osPath, fi); ok {
			return h, nil
		}
	}
	h, err := HashFile(ctx, osPath)
	if err != nil {
		return "", err
	}
	if c != nil {
		c.Put(osPath, fi, h)
	}
	return h, nil
}

// HashFile returns the hex BLAKE3-256 of the regular file at path. It never
// follows a symlink at path, and never blocks opening a fifo put there:
// both are errors. ctx is checked between 1 MiB reads.
func HashFile(ctx context.Context, path string) (string, error) {
	// O_NONBLOCK only matters for a fifo (open would wait for a writer);
	// reads of a regular file are not affected by it.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	} else if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("hash %s: not a regular file (%s)", path, fi.Mode().Type())
	}
	h := NewHash()
	// Sized to the file: a tree of small files must not allocate (and
	// zero) a large buffer per file.
	buf := make([]byte, min(max(fi.Size()+1, 4<<10), 1<<20))
	for {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		n, err := f.Read(buf)
		h.Write(buf[:n])
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", fmt.Errorf("hash %s: %w", path, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// FillHashes sets Hash on the local file entries whose remote counterpart is
// a file of the same size: only those can be unchanged; every other file
// will be fetched whatever its content. root is the local task root.
func FillHashes(ctx context.Context, root string, local, remote *Manifest, cache *Cache) error {
	for i := range local.Entries {
		l := &local.Entries[i]
		if l.Type != File || l.Hash != "" {
			continue
		}
		r, ok := remote.Lookup(l.Path)
		if !ok || r.Type != File || r.Size != l.Size {
			continue
		}
		osPath := root
		if l.Path != "." {
			osPath = filepath.Join(root, filepath.FromSlash(l.Path))
		}
		fi, err := os.Lstat(osPath)
		if errors.Is(err, fs.ErrNotExist) {
			continue // gone since the scan: left unhashed, so it is fetched
		}
		if err != nil {
			return fmt.Errorf("stat %s: %w", osPath, err)
		}
		if !fi.Mode().IsRegular() {
			continue
		}
		h, err := cachedHash(ctx, osPath, fi, cache)
		if err != nil {
			return err
		}
		l.Hash = h
	}
	return nil
}
