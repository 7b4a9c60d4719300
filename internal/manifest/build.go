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

	"github.com/zeebo/blake3"

	"github.com/fanout/fanout/internal/chunk"
	"github.com/fanout/fanout/internal/exclude"
)

// Options tunes Build.
type Options struct {
	// Cache, when set, supplies hashes of files whose size, mtime, inode
	// and ctime are unchanged, and records the hashes Build computes. With
	// Hash off, a file whose hash the cache holds still gets it (nothing is
	// read): FillHashes then has only the cache misses left to look at.
	Cache *Cache
	// Hash computes file hashes, on every core (GOMAXPROCS files at a time,
	// and a big file's chunks by several cores). A minion's scan of its own
	// tree leaves it off and hashes only what it must compare (see
	// FillHashes).
	Hash bool
	// Chunking, when set, describes files in format 3: each is cut into
	// content-defined chunks with these parameters, listed in Entry.Chunks
	// when there are two or more, and Hash is of format 3 (see Entry.Hash).
	// The manifest records them in Manifest.Chunking. Nil: format 2.
	Chunking *chunk.Params
	// WholeHash, with Chunking and Hash, also computes the format 2 hash of
	// every file of two or more chunks, in the same read, so that
	// WithoutChunks and EncodeFormat can give formats 2 and 1 of the
	// manifest for minions that predate format 3. It costs one more BLAKE3
	// pass over those files; leave it off once every host reads format 3.
	WholeHash bool
	// Warn is told about entries that are skipped: special files (devices,
	// sockets, fifos), names that are not valid UTF-8 or fail ValidPath, and
	// symlinks whose target is not valid UTF-8. path is slash-separated and
	// relative to root, like Entry.Path (it may hold invalid UTF-8).
	Warn func(path string, err error)
	// Exclude leaves out every entry it matches (never the root), and
	// everything under a directory it matches, which is not read: rsync's
	// --exclude. The manifest records its patterns (Manifest.Exclude).
	Exclude *exclude.List
	// Excluded is told about each entry Exclude left out (by path, like
	// Warn), so a host can keep what it must not delete (see
	// DiffOptions.Protected).
	Excluded func(path string)
	// Temp is told about fanout temporary files (see IsTemp), by path
	// relative to root like Warn; they are never entries, and a directory
	// with a temporary name is not descended into.
	Temp func(path string)
}

// NewHash returns the content hash fanout uses: BLAKE3-256.
func NewHash() hash.Hash { return blake3.New() }

// Build walks the task at root (a directory or a regular file), never
// following symlinks, and returns its manifest in tree order; entry "."
// describes root itself. Every entry carries its owner and group, by id and
// by name (looked up once per id; an id without a name here has none), so
// the manifest is in format 2, or in format 3 with Options.Chunking; see
// Manifest.EncodeFormat. A root that does not exist yields an empty
// manifest and no error; a root that is a symlink or a special file is an
// error. ctx is checked between entries and between reads.
//
// With Options.Hash, files are hashed by a pool of goroutines while the
// walk goes on; a file is hashed from its first byte to the size the walk
// saw, and one that shrank meanwhile is an error.
func Build(ctx context.Context, root string, opts Options) (*Manifest, error) {
	if opts.Chunking != nil {
		if err := opts.Chunking.Validate(); err != nil {
			return nil, fmt.Errorf("build manifest: %w", err)
		}
	}
	fi, err := os.Lstat(root)
	if errors.Is(err, fs.ErrNotExist) {
		return &Manifest{Chunking: cloneParams(opts.Chunking), Exclude: opts.Exclude.Patterns()}, nil
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
	if opts.Hash {
		b.pool = newHashPool(ctx, opts.Chunking, opts.WholeHash, opts.Cache)
		b.ctx = b.pool.ctx // a failed hash stops the walk
	}
	err = b.add(root, ".", fi)
	if err == nil && fi.IsDir() {
		err = b.walk(root, ".")
	}
	if b.pool != nil {
		if err != nil {
			b.pool.fail(err)
		}
		// The pool's error is the first of the walk's and the hashes'.
		if perr := b.pool.wait(); perr != nil {
			err = perr
		}
	}
	if err != nil {
		return nil, err
	}
	for _, p := range b.pending {
		b.entries[p.i].setHash(p.job.res)
	}
	m := &Manifest{Chunking: cloneParams(opts.Chunking), Exclude: opts.Exclude.Patterns(), Entries: b.entries}
	m.Sort()
	return m, nil
}

func cloneParams(p *chunk.Params) *chunk.Params {
	if p == nil {
		return nil
	}
	q := *p
	return &q
}

// setHash gives e the hashes of its content.
func (e *Entry) setHash(h fileHash) { e.Hash, e.Chunks, e.whole = h.hash, h.chunks, h.whole }

type builder struct {
	ctx     context.Context
	opts    Options
	entries []Entry
	names   ownerNames
	pool    *hashPool // with Options.Hash
	pending []pendingHash
}

// pendingHash is a file of entries[i] being hashed by the pool.
type pendingHash struct {
	i   int
	job *hashJob
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
		if err := b.entry(osDir, rel, de.Name()); err != nil {
			return err
		}
	}
	return nil
}

// entry adds the entry name of directory rel (at osDir) and, for a
// directory, its subtree; it skips what it must (temporary files, bad
// names, excluded paths) and what vanished meanwhile.
func (b *builder) entry(osDir, rel, name string) error {
	if err := b.ctx.Err(); err != nil {
		return err
	}
	p := join(rel, name)
	osPath := filepath.Join(osDir, name)
	if IsTemp(name) {
		if b.opts.Temp != nil {
			b.opts.Temp(p)
		}
		return nil
	}
	if !utf8.ValidString(name) {
		b.warn(p, errors.New("name is not valid UTF-8; skipped"))
		return nil
	}
	if err := ValidPath(p); err != nil {
		b.warn(p, fmt.Errorf("%w; skipped", err))
		return nil
	}
	fi, err := os.Lstat(osPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // removed while we walked
	}
	if err != nil {
		return fmt.Errorf("stat %s: %w", osPath, err)
	}
	if b.opts.Exclude.Match(p, fi.IsDir()) {
		if b.opts.Excluded != nil {
			b.opts.Excluded(p)
		}
		return nil
	}
	if err := b.add(osPath, p, fi); err != nil {
		return err
	}
	if fi.IsDir() {
		return b.walk(osPath, p)
	}
	return nil
}

func (b *builder) add(osPath, rel string, fi fs.FileInfo) error {
	e := Entry{Path: rel, Mode: fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky), MTime: fi.ModTime().UnixNano()}
	hash := false
	switch {
	case fi.IsDir():
		e.Type = Dir
	case fi.Mode().IsRegular():
		e.Type = File
		e.Size = fi.Size()
		if h, ok := cached(b.opts.Cache, osPath, fi, b.opts.Chunking, b.opts.WholeHash && b.opts.Hash); ok {
			e.setHash(h)
		} else {
			hash = b.opts.Hash
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
	if hash {
		j := &hashJob{osPath: osPath, fi: fi}
		b.pending = append(b.pending, pendingHash{i: len(b.entries) - 1, job: j})
		return b.pool.submit(j)
	}
	return nil
}

// cached returns the hashes of the file at osPath that c holds, in the
// format p gives (nil: formats 1 and 2), and with its whole-content hash
// when whole is set.
func cached(c *Cache, osPath string, fi fs.FileInfo, p *chunk.Params, whole bool) (fileHash, bool) {
	if c == nil {
		return fileHash{}, false
	}
	if p == nil {
		h, ok := c.Get(osPath, fi)
		return fileHash{hash: h}, ok
	}
	h, ok := c.getChunks(osPath, fi, *p)
	if ok && whole && len(h.chunks) > 0 && h.whole == "" {
		return fileHash{}, false // hashed before WholeHash was asked for
	}
	return h, ok
}

// HashFile returns the hex BLAKE3-256 of the regular file at path: its
// Hash in formats 1 and 2. It never follows a symlink at path, and never
// blocks opening a fifo put there: both are errors. ctx is checked between
// 1 MiB reads.
func HashFile(ctx context.Context, path string) (string, error) {
	f, err := openRegular(path)
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	h := NewHash()
	// Sized to the file: a tree of small files must not allocate (and
	// zero) a large buffer per file. The spare 16 KiB of capacity is where
	// blake3 pads a short write; without it, it allocates 16 KiB a write.
	n := min(max(fi.Size()+1, 4<<10), 1<<20)
	buf := make([]byte, n, n+16<<10)
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

// HashChunks returns the format 3 Hash of the regular file at path, cut
// into chunks with p, and its chunk list (nil for a file of one chunk): what
// a manifest built with Options.Chunking set to p says of it. It opens path
// as HashFile does; ctx is checked between reads.
func HashChunks(ctx context.Context, path string, p chunk.Params) (hash string, chunks []Chunk, err error) {
	if err := p.Validate(); err != nil {
		return "", nil, err
	}
	f, err := openRegular(path)
	if err != nil {
		return "", nil, fmt.Errorf("hash %s: %w", path, err)
	}
	fi, err := f.Stat()
	f.Close()
	if err != nil {
		return "", nil, fmt.Errorf("hash %s: %w", path, err)
	}
	h, err := newHashWorker(ctx, &p, false).hash(path, fi.Size())
	return h.hash, h.chunks, err
}

// FillHashes sets Hash on the local file entries whose remote counterpart is
// a file of the same size: only those can be unchanged; every other file
// will be fetched whatever its content. root is the local task root.
//
// Hashes are computed in the remote manifest's format, so that Diff
// compares like with like: for a format 3 remote, local files are cut with
// remote.Chunking and get their chunk lists too. When local was scanned in
// another format (local.Chunking differs from remote.Chunking), the hashes
// it holds are dropped first and it takes remote's chunking. Cached hashes
// are used where the cache has them in that format; the rest are hashed on
// every core and recorded in cache.
func FillHashes(ctx context.Context, root string, local, remote *Manifest, cache *Cache) error {
	if !sameParams(local.Chunking, remote.Chunking) {
		for i := range local.Entries {
			local.Entries[i].setHash(fileHash{})
		}
		local.Chunking = cloneParams(remote.Chunking)
	}
	var pool *hashPool
	var pending []pendingHash
	var err error
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
		fi, serr := os.Lstat(osPath)
		if errors.Is(serr, fs.ErrNotExist) {
			continue // gone since the scan: left unhashed, so it is fetched
		}
		if serr != nil {
			err = fmt.Errorf("stat %s: %w", osPath, serr)
			break
		}
		if !fi.Mode().IsRegular() {
			continue
		}
		if h, ok := cached(cache, osPath, fi, local.Chunking, false); ok {
			l.setHash(h)
			continue
		}
		if pool == nil {
			pool = newHashPool(ctx, local.Chunking, false, cache)
		}
		j := &hashJob{osPath: osPath, fi: fi}
		pending = append(pending, pendingHash{i: i, job: j})
		if err = pool.submit(j); err != nil {
			break
		}
	}
	if pool != nil {
		if err != nil {
			pool.fail(err)
		}
		if perr := pool.wait(); perr != nil {
			err = perr
		}
	}
	if err != nil {
		return err
	}
	for _, p := range pending {
		local.Entries[p.i].setHash(p.job.res)
	}
	return nil
}

// sameParams reports whether a and b are both nil or equal.
func sameParams(a, b *chunk.Params) bool {
	return a == b || a != nil && b != nil && *a == *b
}
