package apply

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
	"sync"
	"syscall"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/fanout/fanout/internal/chunk"
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

// Batching: files up to batchFileMax bytes are fetched together, up to
// batchFiles files or batchBytes bytes a request, when the Fetcher can.
const (
	batchFileMax = 256 << 10
	batchFiles   = 512
	batchBytes   = 8 << 20
)

// BatchFetcher is a Fetcher that can also stream several whole files in one
// request: their contents concatenated, in the order given, into w. It
// returns the bytes written. Apply uses it for runs of small files, so a
// tree of many small files does not cost a round trip per file; every file
// is still verified on its own.
type BatchFetcher interface {
	FetchBatch(ctx context.Context, es []manifest.Entry, w io.Writer) (int64, error)
}

// batches groups a run of fetches: consecutive small files together when
// the Fetcher batches, every other file alone.
func (a *applier) batches(acts []manifest.Action) [][]manifest.Entry {
	_, canBatch := a.opts.Fetcher.(BatchFetcher)
	var out [][]manifest.Entry
	var cur []manifest.Entry
	var curBytes int64
	flush := func() {
		if len(cur) > 0 {
			out = append(out, cur)
			cur, curBytes = nil, 0
		}
	}
	for _, act := range acts {
		e := act.Entry
		if !canBatch || e.Size > batchFileMax {
			flush()
			out = append(out, []manifest.Entry{e})
			continue
		}
		if len(cur) == batchFiles || curBytes+e.Size > batchBytes {
			flush()
		}
		cur = append(cur, e)
		curBytes += e.Size
	}
	flush()
	return out
}

// fetchAll fetches a run of files, Options.Workers batches at a time. The
// first error cancels the others; fetchAll returns once every worker has
// ended.
func (a *applier) fetchAll(ctx context.Context, acts []manifest.Action) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		once  sync.Once
		first error
		wg    sync.WaitGroup
	)
	batches := a.batches(acts)
	jobs := make(chan []manifest.Entry)
	for range min(a.opts.Workers, len(batches)) {
		wg.Go(func() {
			for es := range jobs {
				if err := a.fetchBatch(ctx, es); err != nil {
					once.Do(func() {
						first = err
						cancel()
					})
				}
			}
		})
	}
feed:
	for _, b := range batches {
		select {
		case jobs <- b:
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

// fetchBatch fetches es, in one request when there are several. Files that
// a broken batch did not deliver are fetched one by one, through the
// Fetcher's own retries.
func (a *applier) fetchBatch(ctx context.Context, es []manifest.Entry) error {
	rest := es
	if len(es) > 1 {
		bf := a.opts.Fetcher.(BatchFetcher)
		sp := &splitter{a: a, ctx: ctx, es: es}
		_, err := bf.FetchBatch(ctx, es, sp)
		err = sp.close(err)
		var mismatch *HashMismatchError
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.As(err, &mismatch), sp.werr != nil:
			return fmt.Errorf("fetch %s: %w", sp.failedPath(), err)
		case err != nil:
			a.log.WithError(err).Debug("batch broke off; fetching the rest one by one")
		}
		rest = es[sp.done:]
	}
	for _, e := range rest {
		if err := a.fetch(ctx, e); err != nil {
			return fmt.Errorf("fetch %s: %w", e.Path, err)
		}
	}
	return nil
}

// fetch downloads one file to a temporary name next to its final path,
// verifies its size and hash, fsyncs it with its owner, mode and mtime set,
// and renames it into place. On any failure the temporary file is removed and
// the old file, if any, is left as it was.
func (a *applier) fetch(ctx context.Context, e manifest.Entry) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	asm := a.opts.Assembler
	assembled := asm != nil && len(e.Chunks) > 0
	in, err := a.begin(e, assembled)
	if err != nil {
		return err
	}
	if assembled {
		return in.assemble(ctx, asm)
	}
	_, ferr := a.opts.Fetcher.Fetch(ctx, e, 0, in.sink)
	return in.end(ferr)
}

// assemble has asm build the file in place in its part file, then
// finishes it as end does. The Assembler verified every chunk: the sink,
// which hashes a stream, is told the file is whole. A part file whose
// Apply is interrupted (ctx done) is kept for the next Apply to resume.
func (in *incoming) assemble(ctx context.Context, asm Assembler) error {
	s := in.sink
	var err error
	if err = in.f.Truncate(in.e.Size); err != nil {
		err = fmt.Errorf("size %s: %w", in.f.Name(), err)
	} else {
		var sink ChunkSink
		if obs, ok := in.a.opts.Observer.(ChunkObserver); ok {
			sink = entrySink{obs: obs, e: in.e}
		}
		err = asm.Assemble(ctx, in.e, in.f, sink)
	}
	s.assembled = err == nil
	s.n = in.e.Size
	in.keep = err != nil && ctx.Err() != nil
	return in.end(err)
}

// entrySink is the ChunkSink of an Observer's entry.
type entrySink struct {
	obs ChunkObserver
	e   manifest.Entry
}

func (s entrySink) Arriving(i int, n int64) { s.obs.Arriving(s.e, i, n) }
func (s entrySink) Landed(i int)            { s.obs.Landed(s.e, i) }

// incoming is one file being written under its temporary name.
type incoming struct {
	a    *applier
	e    manifest.Entry
	f    *os.File
	l    loc    // where the file goes
	tmp  string // the temporary name in l's directory
	sink *sink
	hash string // its content's hash, once verified
	// keep: the file is a part file (see PartPath) whose Apply was
	// interrupted; a failure leaves it for the next Apply to resume.
	keep bool
	// durable, when set, makes the file durable with the others of its
	// batch, in one syncfs, instead of an fsync of its own (see
	// durableBatch); end then leaves its rename to the batch's commit.
	durable *durableBatch
}

// begin creates the temporary file for e in the directory that will hold
// it, reached without following a symlink. With part it opens e's part
// file instead (see openPart), which may hold bytes of an interrupted
// earlier Apply: only an Assembler, which verifies each chunk it keeps,
// may be given it.
func (a *applier) begin(e manifest.Entry, part bool) (in *incoming, err error) {
	l, err := a.locate(e.Path)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			a.release(l.key)
		}
	}()
	if st, err := lstatAt(l.dir, l.name); err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return nil, fmt.Errorf("%s is a directory: %w", l.path, syscall.EISDIR)
	}
	var tmp string
	var fd int
	if part {
		tmp = partName(e)
		var resumed bool
		if fd, resumed, err = openPart(l, tmp); err != nil {
			return nil, err
		}
		if resumed {
			a.log.WithField("path", e.Path).Debug("resuming from the part file of an interrupted pull")
		}
	} else {
		if tmp, err = tempName(); err != nil {
			return nil, err
		}
		// Read and write: an Observer may read the file as it grows.
		fd, err = openat(l.dir, tmp, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW, 0o600)
		if err != nil {
			p := filepath.Join(filepath.Dir(l.path), tmp)
			return nil, fmt.Errorf("create temporary file: %w", &fs.PathError{Op: "open", Path: p, Err: err})
		}
	}
	f := os.NewFile(uintptr(fd), filepath.Join(filepath.Dir(l.path), tmp))
	sk := &sink{f: f, size: e.Size, progress: a.opts.Progress}
	if len(e.Chunks) > 0 {
		// Format 3: the file is verified chunk by chunk, on the
		// Verifier's own goroutine; its Hash is the chunk list's.
		refs, rerr := e.Refs()
		if rerr != nil {
			f.Close()
			unix.Unlinkat(l.dir, tmp, 0)
			return nil, rerr
		}
		sk.v, sk.want = chunk.NewVerifier(refs), e.Hash
	} else {
		sk.h = a.newHash()
	}
	in = &incoming{a: a, e: e, f: f, l: l, tmp: tmp, sink: sk}
	if obs := a.opts.Observer; obs != nil {
		obs.Begin(e, f)
		in.sink.wrote = func(n int64) { obs.Wrote(e, n) }
	}
	return in, nil
}

// newHash returns a whole-content hasher, reset: one end gave back or a
// new one.
func (a *applier) newHash() hash.Hash {
	if h, ok := a.hashes.Get().(hash.Hash); ok {
		h.Reset()
		return h
	}
	return manifest.NewHash()
}

// end finishes the file once the fetcher returned ferr: it verifies it,
// gives it its owner, mode and mtime, fsyncs it and renames it into place,
// or removes it. The file is closed after the Observer's End, and the
// handle of its directory released. A file of a durable batch, verified,
// waits for the batch's commit instead of its own fsync and rename.
func (in *incoming) end(ferr error) (err error) {
	a, e, s := in.a, in.e, in.sink
	pending := false
	defer func() {
		if !pending {
			in.close(err)
		}
	}()
	got, verr := s.close()
	switch {
	case s.tooLong:
	case s.werr != nil:
		// Our own write failed (disk full, quota, I/O): say so, whatever
		// the fetcher made of it. The error already names the temporary
		// file; name the file the operator knows.
		return fmt.Errorf("write %s: %w%s", e.Path, s.werr, writeHint(s.werr))
	case ferr != nil:
		return ferr
	}
	if s.n != e.Size || got != e.Hash || verr != nil {
		return &HashMismatchError{Path: e.Path, Want: e.Hash, Got: got, WantSize: e.Size, GotSize: s.n}
	}
	x := a.expect(e)
	fd := int(in.f.Fd())
	if err := a.chown(fd, x, in.f.Name()); err != nil {
		return err
	}
	if err := a.chmod(fd, x, 0, in.f.Name()); err != nil {
		return err
	}
	// The temporary file is ours and a regular file; set its mtime before
	// the fsync so that is durable too.
	if err := setTimes(in.l.dir, in.tmp, e.MTime, in.f.Name()); err != nil {
		return err
	}
	in.hash = got
	if in.durable != nil {
		// Verified: a host streaming it from this one need not wait for
		// the batch's sync (a file of several chunks is served by chunk).
		if obs, ok := a.opts.Observer.(ChunkObserver); ok {
			for i := range e.Chunks {
				obs.Landed(e, i)
			}
		}
		pending = true
		return in.durable.add(in)
	}
	if err := in.f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", in.f.Name(), err)
	}
	return in.place()
}

// place renames the verified and synced file into place and counts it.
func (in *incoming) place() error {
	a, e, l := in.a, in.e, in.l
	err := ignoringEINTR(func() error { return unix.Renameat(l.dir, in.tmp, l.dir, l.name) })
	if err != nil {
		return &fs.PathError{Op: "rename", Path: l.path, Err: err}
	}
	a.touch(l.key)
	if a.opts.Cache != nil {
		a.remember(in, in.hash)
	}
	a.done(manifest.OpFetch, in.sink.n)
	if a.debug {
		a.log.WithFields(logrus.Fields{"path": e.Path, "bytes": in.sink.n}).Debug("fetched")
	}
	return nil
}

// close ends the file after end, or its batch's commit, with err: on a
// failure the temporary file is removed (unless kept to resume), the
// Observer is told, and the file and its directory's handle released.
func (in *incoming) close(err error) {
	a, l, s := in.a, in.l, in.sink
	if err != nil && !in.keep {
		if rerr := unix.Unlinkat(l.dir, in.tmp, 0); rerr != nil {
			a.log.WithError(rerr).WithField("file", in.f.Name()).Warn("could not remove temporary file")
		}
	}
	if obs := a.opts.Observer; obs != nil {
		obs.End(in.e, err)
	}
	// Synced on success, removed on failure: closing loses nothing.
	in.f.Close()
	a.release(l.key)
	if s.h != nil {
		a.hashes.Put(s.h)
		s.h = nil
	}
}

// durableFiles is how many verified files of a batch wait, open, for one
// syncfs before their renames: on ext4 on this project's build machine an
// fsync of each of 100,000 small files took 13 s of a 20 s pull, and rsync
// syncs none. Each worker holds at most this many open (twice, with a
// pipelining host's Incoming), besides the directory handles.
const durableFiles = 64

// durableBatch makes the small files of a batch durable together: each
// verified file (owner, mode and mtime set) waits under its temporary name;
// at durableFiles of them, or when the batch ends (commit), one syncfs of
// their filesystem makes their content and metadata durable, and then each
// is renamed into place, as an fsync each before its rename did. A crash
// before the rename leaves a temporary file (swept at the next start), and
// Apply fsyncs the directories of the renames before it returns, as ever.
type durableBatch struct {
	files []*incoming
}

// add holds in, verified, for the next commit; it commits once
// durableFiles wait. The error is in's own, or the commit's.
func (b *durableBatch) add(in *incoming) error {
	b.files = append(b.files, in)
	if len(b.files) < durableFiles {
		return nil
	}
	return b.commit()
}

// syncfsFlushes reports whether fd is on a local filesystem whose syncfs is
// known to make its files durable as their fsyncs would: ext4, XFS, btrfs
// and tmpfs. On others (NFS, FUSE, 9p...) each file is fsynced, as before.
func syncfsFlushes(fd int) bool {
	var fs unix.Statfs_t
	if unix.Fstatfs(fd, &fs) != nil {
		return false
	}
	switch int64(fs.Type) {
	case unix.EXT4_SUPER_MAGIC, unix.XFS_SUPER_MAGIC, unix.BTRFS_SUPER_MAGIC, unix.TMPFS_MAGIC:
		return true
	}
	return false
}

// commit syncs the filesystems of the files waiting, once each, and renames
// each file into place; a file whose filesystem syncfs failed is fsynced
// instead. It returns
// the first failure; a file that failed is removed, the others placed.
func (b *durableBatch) commit() error {
	files := b.files
	b.files = nil
	if len(files) == 0 {
		return nil
	}
	a := files[0].a
	// One syncfs per filesystem the files are on (a task root may hold a
	// mount point); a file whose filesystem could not be synced so, or
	// that could not be told, is fsynced alone.
	synced := map[uint64]bool{}
	devs := make([]uint64, len(files))
	known := make([]bool, len(files)) // else fsynced alone
	for k, in := range files {
		var st unix.Stat_t
		if unix.Fstat(int(in.f.Fd()), &st) != nil {
			continue
		}
		dev := uint64(st.Dev)
		devs[k], known[k] = dev, true
		if _, seen := synced[dev]; seen {
			continue
		}
		if !syncfsFlushes(int(in.f.Fd())) {
			synced[dev] = false
			continue
		}
		err := ignoringEINTR(func() error { return unix.Syncfs(int(in.f.Fd())) })
		synced[dev] = err == nil
		if err != nil {
			a.log.WithError(err).Debug("syncfs failed; syncing each file")
		} else if a.synced != nil {
			a.synced("syncfs", filepath.Dir(in.f.Name()))
		}
	}
	var first error
	for k, in := range files {
		var err error
		if !known[k] || !synced[devs[k]] {
			if err = in.f.Sync(); err != nil {
				err = fmt.Errorf("fsync %s: %w", in.f.Name(), err)
			}
		}
		if err == nil {
			err = in.place()
		}
		in.close(err)
		if err != nil && first == nil {
			first = err
		}
	}
	return first
}

// remember records the hash of a file just renamed into place in the cache,
// keyed by its OS path and what its handle stats, once the name is checked
// (without following a symlink) to still be that file, unchanged.
func (a *applier) remember(in *incoming, hash string) {
	fi, err := in.f.Stat()
	if err != nil {
		return
	}
	mine, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return
	}
	st, err := lstatAt(in.l.dir, in.l.name)
	if err != nil || st.Dev != mine.Dev || st.Ino != mine.Ino || st.Size != mine.Size ||
		st.Ctim.Nano() != mine.Ctim.Nano() || st.Mtim.Nano() != mine.Mtim.Nano() {
		return
	}
	if p := a.opts.Chunking; p != nil {
		a.opts.Cache.PutChunks(a.osPath(in.e.Path), fi, *p, hash, in.e.Chunks)
		return
	}
	a.opts.Cache.Put(a.osPath(in.e.Path), fi, hash)
}

// splitter is the writer a batch is streamed into: it cuts the stream by the
// manifest sizes into one temporary file after another, finishing each as
// it fills.
type splitter struct {
	a    *applier
	ctx  context.Context
	es   []manifest.Entry
	done int       // files finished
	cur  *incoming // the file being filled, or nil
	werr error     // a local failure: creating, writing or finishing a file
	// durable holds the files finished and verified until their batch
	// commits (see durableBatch): close commits the last.
	durable durableBatch
}

func (sp *splitter) Write(b []byte) (int, error) {
	if sp.werr != nil {
		return 0, sp.werr
	}
	n := 0
	for {
		if err := sp.advance(); err != nil {
			sp.werr = err
			return n, err
		}
		if len(b) == 0 {
			return n, nil
		}
		if sp.cur == nil {
			sp.werr = errTooLong
			return n, errTooLong
		}
		room := sp.cur.e.Size - sp.cur.sink.n
		k := int(min(int64(len(b)), room))
		m, err := sp.cur.sink.Write(b[:k])
		n += m
		b = b[m:]
		if err != nil {
			sp.werr = err
			return n, err
		}
	}
}

// advance finishes the current file once full (and any empty files after
// it) and begins the next one.
func (sp *splitter) advance() error {
	for {
		if sp.cur != nil {
			if sp.cur.sink.n < sp.cur.e.Size {
				return nil
			}
			cur := sp.cur
			sp.cur = nil
			if err := cur.end(nil); err != nil {
				return err
			}
			sp.done++
		}
		if sp.done == len(sp.es) {
			return nil
		}
		if err := sp.ctx.Err(); err != nil {
			return err
		}
		in, err := sp.a.begin(sp.es[sp.done], false)
		if err != nil {
			return err
		}
		in.durable = &sp.durable
		sp.cur = in
	}
}

// close ends the batch after the fetcher returned ferr: trailing empty files
// are finished, the files finished are made durable and placed (see
// durableBatch), and a file left half-filled is removed (it is fetched again
// on its own). It returns the error that ended the batch, if any.
func (sp *splitter) close(ferr error) error {
	if ferr == nil && sp.werr == nil {
		if err := sp.advance(); err != nil {
			sp.werr = err
		}
	}
	cerr := sp.durable.commit()
	if cerr != nil && sp.werr == nil {
		sp.werr = cerr
	}
	if sp.cur != nil {
		cur := sp.cur
		sp.cur = nil
		cause := ferr
		if cause == nil {
			cause = sp.werr
		}
		if cause == nil {
			cause = io.ErrUnexpectedEOF
		}
		err := cur.end(cause)
		if cerr != nil {
			return cerr // a file this host failed to place comes first
		}
		var mismatch *HashMismatchError
		if errors.As(err, &mismatch) || sp.werr != nil {
			return err
		}
	}
	if sp.werr != nil {
		return sp.werr
	}
	if ferr == nil && sp.done < len(sp.es) {
		return io.ErrUnexpectedEOF
	}
	return ferr
}

// failedPath names the file a batch failed on.
func (sp *splitter) failedPath() string {
	if sp.done < len(sp.es) {
		return sp.es[sp.done].Path
	}
	return sp.es[len(sp.es)-1].Path
}

// writeHint says what to do about a failed write, when it is a lack of
// room.
func writeHint(err error) string {
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return " (the disk is full or a quota applies: free space; the old file is intact and the next pull retries)"
	case errors.Is(err, syscall.EFBIG):
		return " (a file size limit applies, e.g. ulimit -f: lift it; the old file is intact and the next pull retries)"
	}
	return ""
}

// errTooLong stops a fetch that sends more bytes than the manifest says.
var errTooLong = errors.New("more bytes than the manifest's size")

// errBadChunk stops a fetch whose bytes failed a chunk's hash.
var errBadChunk = errors.New("a chunk's bytes do not match its hash")

// close ends the hashing and returns the content's hash as the manifest
// writes it (for a file of several chunks, its Hash when every chunk
// verified) and, for chunks, the Verifier's verdict.
func (s *sink) close() (string, error) {
	if s.assembled {
		s.v.Close() // it saw no bytes: the Assembler verified each chunk
		return s.want, nil
	}
	if s.v == nil {
		return hex.EncodeToString(s.h.Sum(nil)), nil
	}
	if err := s.v.Close(); err != nil {
		return "", err
	}
	return s.want, nil
}

// sink is the writer a Fetcher fills: it writes to the temporary file and
// the hash, counts bytes, reports progress, refuses bytes beyond the
// expected size (a bad source cannot fill the disk), and remembers a local
// write error so it is reported even if the Fetcher does not wrap it.
type sink struct {
	f    *os.File
	h    hash.Hash       // the whole content's hash (formats 1, 2, one-chunk files)
	v    *chunk.Verifier // or each chunk's (a format 3 file of several chunks)
	want string          // with v: the Hash every verified chunk stands for
	// assembled: an Assembler wrote the file chunk by chunk, each chunk
	// verified; the stream hash saw none of it.
	assembled bool
	size      int64
	progress  func(int64)
	wrote     func(total int64) // told of the bytes written so far

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
	if s.v != nil {
		if _, verr := s.v.Write(b[:n]); verr != nil && err == nil {
			// A bad chunk: stop the transfer now, not at the end. end
			// reports it as a hash mismatch.
			err = errBadChunk
		}
	} else {
		s.h.Write(b[:n])
	}
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
