// Package apply carries out a manifest plan on a host's tree. Every fetched
// file is written under a temporary name, verified against its hash, fsynced
// and only then renamed into place, so a reader never sees a half-written
// file and a failed transfer leaves the old version intact. Nothing is ever
// written through a symlink.
package apply

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/fanout/fanout/internal/manifest"
)

// Fetcher streams a file's content, from offset, into w and returns the
// bytes written.
type Fetcher interface {
	Fetch(ctx context.Context, e manifest.Entry, offset int64, w io.Writer) (int64, error)
}

// Options tunes Apply.
type Options struct {
	Fetcher Fetcher
	// Cache, when set, learns the hash of every file written.
	Cache *manifest.Cache
	// Workers is how many files are fetched at once; default 4.
	Workers int
	// Progress, when set, is told of bytes received; it is called from
	// several goroutines at once.
	Progress func(n int64)
	Log      logrus.FieldLogger
}

// Stats counts what Apply did.
type Stats struct {
	Files, Dirs, Symlinks, Removed, Meta int
	Bytes                                int64
}

// HashMismatchError reports fetched bytes that do not match the manifest:
// the source that sent them is bad.
type HashMismatchError struct {
	Path              string
	Want, Got         string
	WantSize, GotSize int64
}

func (e *HashMismatchError) Error() string {
	if e.WantSize != e.GotSize {
		return fmt.Sprintf("%s: received %d bytes, manifest says %d", e.Path, e.GotSize, e.WantSize)
	}
	return fmt.Sprintf("%s: content hash %.16s does not match the manifest's %.16s", e.Path, e.Got, e.Want)
}

// Apply realises plan under root, the OS path of the task root on this host
// (a directory, or the file itself for a single-file task; entry "." is
// root). root's parent must exist. Apply stops at the first error and
// returns it with the stats so far.
func Apply(ctx context.Context, root string, plan *manifest.Plan, opts Options) (Stats, error) {
	if opts.Workers <= 0 {
		opts.Workers = 4
	}
	a := &applier{root: filepath.Clean(root), opts: opts, verified: map[string]bool{}, touched: map[string]bool{}}
	var st Stats
	var fetches []manifest.Entry
	i := 0
	for ; i < len(plan.Actions); i++ {
		act := plan.Actions[i]
		if act.Op == manifest.OpFetch {
			fetches = append(fetches, act.Entry)
			continue
		}
		if act.Op == manifest.OpMeta && len(fetches) > 0 {
			break // metadata runs after every fetch is in place
		}
		if err := a.do(ctx, act, &st); err != nil {
			return st, err
		}
	}
	if err := a.fetchAll(ctx, fetches, &st); err != nil {
		return st, err
	}
	for ; i < len(plan.Actions); i++ {
		act := plan.Actions[i]
		if act.Op == manifest.OpFetch {
			continue
		}
		if err := a.do(ctx, act, &st); err != nil {
			return st, err
		}
	}
	return st, a.syncDirs()
}

type applier struct {
	root string
	opts Options

	mu       sync.Mutex
	verified map[string]bool // directories checked to be real directories
	touched  map[string]bool // directories whose entries changed (fsync at end)
}

// osPath maps a manifest path to this host's OS path.
func (a *applier) osPath(p string) string {
	if p == "." {
		return a.root
	}
	return filepath.Join(a.root, filepath.FromSlash(p))
}

// realDir checks that dir and every directory between the task root and it
// is a real directory, not a symlink. For the root's own parent (a file
// task, or creating the root) it checks nothing: the operator's layout
// above the task root is theirs.
func (a *applier) realDir(dir string) error {
	parentOfRoot := filepath.Dir(a.root)
	var chain []string
	for d := dir; d != parentOfRoot; d = filepath.Dir(d) {
		if len(d) < len(a.root) {
			return fmt.Errorf("%s is outside the task root %s", dir, a.root)
		}
		chain = append(chain, d)
	}
	for i := len(chain) - 1; i >= 0; i-- {
		d := chain[i]
		a.mu.Lock()
		ok := a.verified[d]
		a.mu.Unlock()
		if ok {
			continue
		}
		fi, err := os.Lstat(d)
		if err != nil {
			return fmt.Errorf("check directory %s: %w", d, err)
		}
		if !fi.IsDir() {
			return fmt.Errorf("refusing to write under %s: it is a %s, not a directory", d, typeName(fi))
		}
		a.mu.Lock()
		a.verified[d] = true
		a.mu.Unlock()
	}
	return nil
}

func typeName(fi fs.FileInfo) string {
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return "symlink"
	case fi.IsDir():
		return "directory"
	case fi.Mode().IsRegular():
		return "file"
	}
	return "special file"
}

func (a *applier) touch(dir string) {
	a.mu.Lock()
	a.touched[dir] = true
	a.mu.Unlock()
}

func (a *applier) do(ctx context.Context, act manifest.Action, st *Stats) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	e := act.Entry
	p := a.osPath(e.Path)
	if err := a.realDir(filepath.Dir(p)); err != nil {
		return fmt.Errorf("%s %s: %w", act.Op, e.Path, err)
	}
	var err error
	switch act.Op {
	case manifest.OpRemove:
		err = os.RemoveAll(p)
		a.forget(p)
		st.Removed++
	case manifest.OpMkdir:
		err = a.mkdir(p, e)
		st.Dirs++
	case manifest.OpSymlink:
		err = a.symlink(p, e)
		st.Symlinks++
	case manifest.OpMeta:
		err = a.meta(p, e)
		st.Meta++
	default:
		err = fmt.Errorf("unexpected operation %s", act.Op)
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", act.Op, e.Path, err)
	}
	a.touch(filepath.Dir(p))
	return nil
}

// forget drops verified directories at or under a removed path.
func (a *applier) forget(p string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for d := range a.verified {
		if d == p || len(d) > len(p) && d[:len(p)] == p && d[len(p)] == filepath.Separator {
			delete(a.verified, d)
		}
	}
}

func (a *applier) mkdir(p string, e manifest.Entry) error {
	err := os.Mkdir(p, 0o700)
	if errors.Is(err, fs.ErrExist) {
		fi, lerr := os.Lstat(p)
		if lerr != nil {
			return lerr
		}
		if !fi.IsDir() {
			return fmt.Errorf("%s exists and is a %s", p, typeName(fi))
		}
		return nil
	}
	if err != nil {
		return err
	}
	// Owner-writable until its own OpMeta sets the final mode, so its
	// children can be written even when the final mode is read-only.
	return os.Chmod(p, e.Mode|0o700)
}

func tempName(dir string) (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return filepath.Join(dir, manifest.TempPrefix+hex.EncodeToString(b)), nil
}

func (a *applier) symlink(p string, e manifest.Entry) error {
	if fi, err := os.Lstat(p); err == nil && fi.IsDir() {
		return fmt.Errorf("%s is a directory", p)
	}
	tmp, err := tempName(filepath.Dir(p))
	if err != nil {
		return err
	}
	if err := os.Symlink(e.Target, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

func (a *applier) meta(p string, e manifest.Entry) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	want := manifest.File
	if e.Type == manifest.Dir {
		want = manifest.Dir
	}
	if (want == manifest.Dir) != fi.IsDir() || (want == manifest.File && !fi.Mode().IsRegular()) {
		return fmt.Errorf("%s is a %s, want a %s", p, typeName(fi), e.Type)
	}
	if e.Type == manifest.Symlink {
		return nil
	}
	if err := os.Chmod(p, e.Mode); err != nil {
		return err
	}
	return setMTime(p, e.MTime)
}

// setMTime sets atime and mtime of p without following a symlink at p.
func setMTime(p string, ns int64) error {
	ts := unix.NsecToTimespec(ns)
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
}

func (a *applier) fetchAll(ctx context.Context, entries []manifest.Entry, st *Stats) error {
	if len(entries) == 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	work := make(chan manifest.Entry)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for range min(a.opts.Workers, len(entries)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for e := range work {
				n, err := a.fetch(ctx, e)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = fmt.Errorf("fetch %s: %w", e.Path, err)
					cancel()
				}
				if err == nil {
					st.Files++
					st.Bytes += n
				}
				mu.Unlock()
			}
		}()
	}
send:
	for _, e := range entries {
		select {
		case work <- e:
		case <-ctx.Done():
			break send
		}
	}
	close(work)
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return firstErr
}

// progressWriter counts bytes for Options.Progress.
type progressWriter struct {
	w  io.Writer
	fn func(int64)
}

func (p progressWriter) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	if p.fn != nil && n > 0 {
		p.fn(int64(n))
	}
	return n, err
}

// fetch downloads one file to a temporary name next to its final path,
// verifies it and renames it into place.
func (a *applier) fetch(ctx context.Context, e manifest.Entry) (int64, error) {
	final := a.osPath(e.Path)
	dir := filepath.Dir(final)
	if err := a.realDir(dir); err != nil {
		return 0, err
	}
	if fi, err := os.Lstat(final); err == nil && fi.IsDir() {
		return 0, fmt.Errorf("%s is a directory", final)
	}
	tmp, err := tempName(dir)
	if err != nil {
		return 0, err
	}
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return 0, fmt.Errorf("create temporary file: %w", err)
	}
	done := false
	defer func() {
		if !done {
			f.Close()
			os.Remove(tmp)
		}
	}()
	h := manifest.NewHash()
	n, err := a.opts.Fetcher.Fetch(ctx, e, 0, progressWriter{io.MultiWriter(f, h), a.opts.Progress})
	if err != nil {
		return n, err
	}
	got := hex.EncodeToString(h.Sum(nil))
	if n != e.Size || got != e.Hash {
		return n, &HashMismatchError{Path: e.Path, Want: e.Hash, Got: got, WantSize: e.Size, GotSize: n}
	}
	if err := f.Chmod(e.Mode); err != nil {
		return n, err
	}
	if err := f.Sync(); err != nil {
		return n, fmt.Errorf("fsync: %w", err)
	}
	if err := f.Close(); err != nil {
		return n, err
	}
	if err := setMTime(tmp, e.MTime); err != nil {
		return n, err
	}
	if err := os.Rename(tmp, final); err != nil {
		return n, fmt.Errorf("rename into place: %w", err)
	}
	done = true
	a.touch(dir)
	if a.opts.Cache != nil {
		if fi, err := os.Lstat(final); err == nil {
			a.opts.Cache.Put(final, fi, got)
		}
	}
	return n, nil
}

// syncDirs fsyncs every directory whose entries changed, so the renames are
// durable.
func (a *applier) syncDirs() error {
	for d := range a.touched {
		f, err := os.Open(d)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("fsync directory %s: %w", d, err)
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return fmt.Errorf("fsync directory %s: %w", d, err)
		}
	}
	return nil
}

// Sweep removes fanout temporary files under root left by an interrupted
// pull, never following symlinks, and returns how many it removed. A
// missing root is not an error.
func Sweep(ctx context.Context, root string) (int, error) {
	fi, err := os.Lstat(root)
	if errors.Is(err, fs.ErrNotExist) {
		return sweepDir(filepath.Dir(root))
	}
	if err != nil {
		return 0, fmt.Errorf("sweep %s: %w", root, err)
	}
	// A file task's temporary files sit next to it.
	n, err := sweepDir(filepath.Dir(root))
	if err != nil || !fi.IsDir() {
		return n, err
	}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if p != root && manifest.IsTemp(d.Name()) {
			if rerr := os.RemoveAll(p); rerr != nil {
				return rerr
			}
			n++
			if d.IsDir() {
				return filepath.SkipDir
			}
		}
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("sweep %s: %w", root, err)
	}
	return n, nil
}

// sweepDir removes temporary files directly in dir.
func sweepDir(dir string) (int, error) {
	des, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("sweep %s: %w", dir, err)
	}
	n := 0
	for _, de := range des {
		if manifest.IsTemp(de.Name()) && de.Type().IsRegular() {
			if err := os.Remove(filepath.Join(dir, de.Name())); err != nil {
				return n, fmt.Errorf("sweep %s: %w", dir, err)
			}
			n++
		}
	}
	return n, nil
}
