package apply

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/fanout/fanout/internal/manifest"
)

// HashMismatchError reports fetched bytes that do not match the manifest,
// in size or in hash: the source that sent them is bad.
type HashMismatchError struct {
	Path              string // manifest path of the file
	Want, Got         string // hex BLAKE3-256; Got is empty when the size was already wrong
	WantSize, GotSize int64  // GotSize is at least what arrived before Apply gave up
}

func (e *HashMismatchError) Error() string {
	if e.WantSize != e.GotSize {
		return fmt.Sprintf("%s: received %d bytes, manifest says %d", e.Path, e.GotSize, e.WantSize)
	}
	return fmt.Sprintf("%s: content hash %.16s does not match the manifest's %.16s", e.Path, e.Got, e.Want)
}

// fetchAll fetches a run of files, Options.Workers at a time. The first
// error cancels the others; fetchAll returns once every worker has ended.
func (a *applier) fetchAll(ctx context.Context, acts []manifest.Action) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		once  sync.Once
		first error
		wg    sync.WaitGroup
	)
	jobs := make(chan manifest.Entry)
	for range min(a.opts.Workers, len(acts)) {
		wg.Go(func() {
			for e := range jobs {
				if err := a.fetch(ctx, e); err != nil {
					once.Do(func() {
						first = fmt.Errorf("fetch %s: %w", e.Path, err)
						cancel()
					})
				}
			}
		})
	}
feed:
	for _, act := range acts {
		select {
		case jobs <- act.Entry:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}

// fetch downloads one file to a temporary name next to its final path,
// verifies its size and hash, fsyncs it with its mode and mtime set, and
// renames it into place. On any failure the temporary file is removed and
// the old file, if any, is left as it was.
func (a *applier) fetch(ctx context.Context, e manifest.Entry) (err error) {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := a.checkParents(e.Path); err != nil {
		return err
	}
	final := a.osPath(e.Path)
	if fi, err := os.Lstat(final); err == nil && fi.IsDir() {
		return fmt.Errorf("%s is a directory: %w", final, syscall.EISDIR)
	}
	dir := filepath.Dir(final)
	tmp, err := tempName(dir)
	if err != nil {
		return err
	}
	// Read and write: an Observer may read the file as it grows.
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("create temporary file: %w", err)
	}
	obs := a.opts.Observer
	if obs != nil {
		obs.Begin(e, f)
	}
	defer func() {
		if err != nil {
			f.Close() // a second Close after success is harmless
			if rerr := os.Remove(tmp); rerr != nil {
				a.log.WithError(rerr).Warn("could not remove temporary file")
			}
		}
		if obs != nil {
			obs.End(e, err)
		}
	}()

	s := &sink{f: f, h: manifest.NewHash(), size: e.Size, progress: a.opts.Progress}
	if obs != nil {
		s.wrote = func(n int64) { obs.Wrote(e, n) }
	}
	_, ferr := a.opts.Fetcher.Fetch(ctx, e, 0, s)
	got := ""
	switch {
	case s.tooLong:
	case s.werr != nil:
		// Our own write failed (disk full, quota, I/O): say so, whatever
		// the fetcher made of it.
		return fmt.Errorf("write %s: %w", tmp, s.werr)
	case ferr != nil:
		return ferr
	default:
		got = hex.EncodeToString(s.h.Sum(nil))
	}
	if s.n != e.Size || got != e.Hash {
		return &HashMismatchError{Path: e.Path, Want: e.Hash, Got: got, WantSize: e.Size, GotSize: s.n}
	}

	if err := f.Chmod(e.Mode); err != nil {
		return err
	}
	// tmp is ours and a regular file; set its mtime before the fsync so
	// that is durable too.
	if err := setMTime(tmp, e.MTime); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	a.touch(dir)
	if a.opts.Cache != nil {
		if fi, err := os.Lstat(final); err == nil {
			a.opts.Cache.Put(final, fi, got)
		}
	}
	a.done(manifest.OpFetch, s.n)
	a.log.WithField("path", e.Path).WithField("bytes", s.n).Debug("fetched")
	return nil
}

// errTooLong stops a fetch that sends more bytes than the manifest says.
var errTooLong = errors.New("more bytes than the manifest's size")

// sink is the writer a Fetcher fills: it writes to the temporary file and
// the hash, counts bytes, reports progress, refuses bytes beyond the
// expected size (a bad source cannot fill the disk), and remembers a local
// write error so it is reported even if the Fetcher does not wrap it.
type sink struct {
	f        *os.File
	h        hash.Hash
	size     int64
	progress func(int64)
	wrote    func(total int64) // told of the bytes written so far

	n       int64 // bytes received
	tooLong bool
	werr    error
}

func (s *sink) Write(b []byte) (int, error) {
	if s.tooLong {
		return 0, errTooLong
	}
	if s.werr != nil {
		return 0, s.werr
	}
	if int64(len(b)) > s.size-s.n {
		s.tooLong = true
		s.n += int64(len(b))
		return 0, errTooLong
	}
	n, err := s.f.Write(b)
	s.h.Write(b[:n])
	s.n += int64(n)
	if n > 0 {
		if s.progress != nil {
			s.progress(int64(n))
		}
		if s.wrote != nil {
			s.wrote(s.n)
		}
	}
	if err != nil {
		s.werr = err
	}
	return n, err
}
