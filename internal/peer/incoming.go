package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fanout/fanout/internal/manifest"
)

// DefaultArrivalWait is how long a reader of a file still being received
// waits for its next bytes before giving up, unless configured.
const DefaultArrivalWait = 30 * time.Second

// ErrArrivalStalled is returned to a reader of a file still being received
// when no new byte arrived for the wait bound.
var ErrArrivalStalled = errors.New("file being received: no new bytes")

// Incoming tracks the files of a snapshot that this host is still
// receiving, so its server can stream them on to the next host as their
// bytes land: the pipelining that lets a chain of hosts move a file at the
// speed of one link. It is driven by the writer through Begin, Wrote and End
// (it satisfies apply.Observer) and read by the server.
//
// Only the files named at construction are incoming; every other file of
// the snapshot is already in place and is served from disk.
type Incoming struct {
	wait time.Duration

	mu      sync.Mutex
	files   map[string]*arrival
	aborted error
}

// arrival is one incoming file. Its fields are guarded by Incoming.mu.
type arrival struct {
	// f is a read handle on the temporary file, from Begin to End.
	f *os.File
	// n is how many bytes f holds so far.
	n int64
	// done: the file was verified and renamed into place; failed: it was
	// discarded, with err.
	done, failed bool
	err          error
	// wake is closed, and replaced, on every change.
	wake chan struct{}
	// attempt counts Begins: a reader holding a handle on an earlier
	// attempt's file must not read the new attempt's length against it.
	attempt int
	// chunks is the file's chunk list when it has several (format 3): its
	// bytes are then served where have marks the chunk verified and
	// written (Landed), in whatever order chunks land, and ahead of that as
	// the writer announces them (Arriving), never by Wrote.
	chunks []manifest.Chunk
	have   []bool
	// part[i] counts the first bytes of chunk i, not landed, that a
	// writer put in f before verifying them (see Arriving); epoch[i]
	// counts the times such bytes were dropped: a reader that sent some of
	// them fails rather than go on with other bytes.
	part  []int64
	epoch []uint32
}

// StreamTail is how many bytes at the end of a chunk that has not landed
// are never served: a host streaming a chunk on as it arrives (see
// Incoming.Arriving) holds them until it verified the chunk, so the host
// behind never completes a chunk this host did not verify. When this host's
// copy turns out bad, the host behind sees a transfer broken off, not a bad
// chunk: it never bars this host as a bad source for it (it may still
// switch away, as from a relay that stalled).
const StreamTail = 4 << 10

// availFrom returns the end of the bytes that may be read from off: the
// byte count written so far, or for a chunked file the end of the run of
// landed chunks that holds off (off itself when its chunk has not landed),
// and then, unless landed, of the next chunk's bytes announced (Arriving)
// but its tail.
func (a *arrival) availFrom(off int64, landed bool) int64 {
	if a.chunks == nil {
		return a.n
	}
	k := sort.Search(len(a.chunks), func(i int) bool { return a.chunks[i].Off+a.chunks[i].Len > off })
	end := off
	for ; k < len(a.chunks) && a.have[k]; k++ {
		end = a.chunks[k].Off + a.chunks[k].Len
	}
	if !landed && k < len(a.chunks) && a.part[k] > 0 {
		c := a.chunks[k]
		end = max(end, c.Off+min(a.part[k], c.Len)-StreamTail)
	}
	return end
}

// partialAt returns the chunk that holds byte off when it has not landed
// and its first bytes up to off are served from part (see Arriving), or -1.
func (a *arrival) partialAt(off int64) int {
	if a.chunks == nil {
		return -1
	}
	k := sort.Search(len(a.chunks), func(i int) bool { return a.chunks[i].Off+a.chunks[i].Len > off })
	if k == len(a.chunks) || a.have[k] || off <= a.chunks[k].Off {
		return -1
	}
	return k
}

// NewIncoming returns an Incoming for the files of entries (files the host
// will write), each waiting to begin. A reader waits at most wait for new
// bytes; zero means DefaultArrivalWait.
func NewIncoming(entries []manifest.Entry, wait time.Duration) *Incoming {
	if wait <= 0 {
		wait = DefaultArrivalWait
	}
	in := &Incoming{wait: wait, files: make(map[string]*arrival, len(entries))}
	for _, e := range entries {
		if e.Type == manifest.File {
			a := &arrival{wake: make(chan struct{})}
			if len(e.Chunks) > 0 {
				a.chunks, a.have = e.Chunks, make([]bool, len(e.Chunks))
				a.part, a.epoch = make([]int64, len(e.Chunks)), make([]uint32, len(e.Chunks))
			}
			in.files[e.Path] = a
		}
	}
	return in
}

// Settle ends the preparing of an Incoming made, before its pull's plan
// was known, with every file of the manifest: the files the plan does not
// fetch are in place already (the scan found their content) and are served
// from disk from now on; those it fetches stay incoming. Until Settle, a
// reader of any file waits, as for bytes not yet arrived: a pulling host
// serves its manifest, and takes its place in a chain, before it has
// scanned its own tree.
func (in *Incoming) Settle(fetch []manifest.Entry) {
	keep := make(map[string]bool, len(fetch))
	for _, e := range fetch {
		keep[e.Path] = true
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	for p, a := range in.files {
		if !keep[p] && !a.done && !a.failed {
			a.done = true
			a.changed()
		}
	}
}

// changed wakes the readers of a. The caller holds in.mu.
func (a *arrival) changed() {
	close(a.wake)
	a.wake = make(chan struct{})
}

// Begin records that the file of e is being written to f, a temporary file
// opened for reading and writing. Incoming keeps a handle of its own, so f
// may be closed at any time.
func (in *Incoming) Begin(e manifest.Entry, f *os.File) {
	rf, err := dupFile(f)
	in.mu.Lock()
	defer in.mu.Unlock()
	a := in.files[e.Path]
	if a == nil {
		if rf != nil {
			rf.Close()
		}
		return
	}
	if a.f != nil { // a second attempt at the same file
		a.f.Close()
	}
	a.f, a.n, a.done, a.failed, a.err = rf, 0, false, false, nil
	a.attempt++
	clear(a.have)
	clear(a.part)
	if err != nil {
		a.failed, a.err = true, err
	}
	a.changed()
}

// Wrote records that the file of e now holds n bytes. A file of several
// chunks ignores it: its bytes are served by chunk, as the writer announces
// them (Arriving) and once verified (Landed).
func (in *Incoming) Wrote(e manifest.Entry, n int64) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if a := in.files[e.Path]; a != nil && a.chunks == nil && n > a.n {
		a.n = n
		a.changed()
	}
}

// Landed records that chunk i of the file of e is written and verified: it
// may be served from now on.
func (in *Incoming) Landed(e manifest.Entry, i int) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if a := in.files[e.Path]; a != nil && i >= 0 && i < len(a.have) && !a.have[i] {
		a.have[i] = true
		a.part[i] = 0
		a.changed()
	}
}

// Arriving records that the first n bytes of chunk i of the file of e are
// written, not yet verified: all of the chunk but its last StreamTail
// bytes may be streamed on before it lands, so a relay adds a few
// kilobytes' time to a chain instead of a chunk's. The writer must land
// the chunk with these very bytes, or drop them first with n = 0: a
// reader that sent any byte of the chunk not landed then fails (and the
// host behind it, which never got the whole chunk, fetches it again). A
// smaller n than recorded is a drop too (down to n).
func (in *Incoming) Arriving(e manifest.Entry, i int, n int64) {
	in.mu.Lock()
	defer in.mu.Unlock()
	a := in.files[e.Path]
	if a == nil || i < 0 || i >= len(a.part) || a.have[i] {
		return
	}
	switch {
	case n < a.part[i]:
		a.part[i] = max(n, 0)
		a.epoch[i]++
		a.changed()
	case n > a.part[i]:
		a.part[i] = n
		a.changed()
	}
}

// Have reports which chunks of the file at manifest path p this host has
// verified: pending is false when the file is not incoming (in place, or
// never incoming: the caller knows which), else have lists its chunks (nil
// for a file served as its bytes are written, not by chunk).
func (in *Incoming) Have(p string) (have []bool, pending bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	a := in.files[p]
	if a == nil || a.done {
		return nil, false
	}
	return slices.Clone(a.have), true
}

// End records that the file of e was renamed into place (err == nil) or
// discarded.
func (in *Incoming) End(e manifest.Entry, err error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	a := in.files[e.Path]
	if a == nil {
		return
	}
	if a.f != nil {
		a.f.Close()
		a.f = nil
	}
	if err == nil {
		a.done = true
	} else {
		a.failed, a.err = true, err
	}
	a.changed()
}

// Abort ends every file not yet in place with err: their readers fail. Files
// already verified and renamed keep being served.
func (in *Incoming) Abort(err error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.aborted = err
	for _, a := range in.files {
		if a.f != nil {
			a.f.Close()
			a.f = nil
		}
		a.changed()
	}
}

// Pending reports whether the file at manifest path p is incoming and not
// yet in place: it must be read through Open, not from its final path.
func (in *Incoming) Pending(p string) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	a := in.files[p]
	return a != nil && !a.done
}

// Open returns a reader of the bytes [offset, end) of the incoming file at
// manifest path p. The reader waits for bytes that have not
// arrived yet, up to the wait bound each time, and fails when the file is
// discarded, when bytes of a chunk it sent before the chunk landed are
// dropped (see Arriving), or when ctx ends. onDisk opens the final file:
// the reader uses it when the file lands in place before the reader got a
// handle on it.
func (in *Incoming) Open(ctx context.Context, p string, end, offset int64, onDisk func() (*os.File, error)) (io.ReadCloser, error) {
	return in.open(ctx, p, end, offset, onDisk, false)
}

// OpenLanded is Open for a reader that takes whole chunks only (it frames
// each, see serveFrames): it reads no byte of a chunk before the chunk
// landed, so a chunk dropped before it landed never cuts it off.
func (in *Incoming) OpenLanded(ctx context.Context, p string, end, offset int64, onDisk func() (*os.File, error)) (io.ReadCloser, error) {
	return in.open(ctx, p, end, offset, onDisk, true)
}

func (in *Incoming) open(ctx context.Context, p string, end, offset int64, onDisk func() (*os.File, error), landed bool) (io.ReadCloser, error) {
	in.mu.Lock()
	a := in.files[p]
	in.mu.Unlock()
	if a == nil {
		return nil, fmt.Errorf("%q is not incoming", p)
	}
	return &arrivalReader{in: in, a: a, ctx: ctx, end: end, off: offset, onDisk: onDisk, partial: -1, landed: landed}, nil
}

// arrivalReader reads an incoming file as it grows.
type arrivalReader struct {
	in     *Incoming
	a      *arrival
	ctx    context.Context
	end    int64 // read up to here
	off    int64 // next byte to read
	onDisk func() (*os.File, error)
	f      *os.File // our own handle, once we have one
	// attempt is the writer's attempt f belongs to.
	attempt int
	// partial is the chunk some of whose bytes, not landed, this reader
	// sent (see Arriving), -1 if none, and epoch that chunk's epoch then.
	partial int
	epoch   uint32
	// landed: the reader takes only landed chunks (OpenLanded).
	landed bool
}

func (r *arrivalReader) Read(p []byte) (int, error) {
	if r.off >= r.end {
		return 0, io.EOF
	}
	if int64(len(p)) > r.end-r.off {
		p = p[:r.end-r.off]
	}
	for {
		avail, k, ep, wake, err := r.ready()
		if err != nil {
			return 0, err
		}
		if avail > r.off {
			if int64(len(p)) > avail-r.off {
				p = p[:avail-r.off]
			}
			n, err := r.f.ReadAt(p, r.off)
			if n > 0 {
				if k >= 0 && r.off+int64(n) > r.a.chunks[k].Off && k != r.partial {
					r.partial, r.epoch = k, ep // bytes of chunk k not verified yet
				}
				// Such bytes, read as a writer may have dropped them,
				// are sent only if they are still the ones announced (a
				// seqlock: the writer drops before it writes others).
				if derr := r.follow(); derr != nil {
					return 0, derr
				}
				r.off += int64(n)
				return n, nil
			}
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, fmt.Errorf("read incoming file: %w", err)
		}
		if err := r.waitMore(wake); err != nil {
			return 0, err
		}
	}
}

// ready makes sure the reader has a handle and returns how many bytes the
// file holds that may be read, the chunk (and its epoch) whose bytes, not
// yet verified, end them (-1 if none), and a channel closed on the next
// change.
func (r *arrivalReader) ready() (int64, int, uint32, <-chan struct{}, error) {
	in, a := r.in, r.a
	in.mu.Lock()
	done, wake := a.done, a.wake
	switch {
	case done:
	case a.failed:
		err := a.err // read under the lock: a retry's Begin resets it
		in.mu.Unlock()
		return 0, -1, 0, nil, fmt.Errorf("incoming file discarded: %w", err)
	case in.aborted != nil:
		err := in.aborted
		in.mu.Unlock()
		return 0, -1, 0, nil, fmt.Errorf("incoming files abandoned: %w", err)
	case r.f != nil && r.attempt != a.attempt:
		// The attempt this reader followed was discarded and the file
		// begun again: what it sent so far is not the new attempt's.
		in.mu.Unlock()
		return 0, -1, 0, nil, errors.New("incoming file discarded: being received again")
	case r.f == nil && a.f != nil:
		f, err := dupFile(a.f)
		if err != nil {
			in.mu.Unlock()
			return 0, -1, 0, nil, err
		}
		r.f, r.attempt = f, a.attempt
	}
	if r.partial >= 0 && a.epoch[r.partial] != r.epoch {
		in.mu.Unlock()
		return 0, -1, 0, nil, errDropped
	}
	n := a.availFrom(r.off, r.landed)
	k, ep := a.partialAt(n), uint32(0)
	if k >= 0 {
		ep = a.epoch[k]
	}
	in.mu.Unlock()
	if done {
		if r.f == nil {
			// It landed before we got a handle: read it where it is now.
			f, err := r.onDisk()
			if err != nil {
				return 0, -1, 0, nil, err
			}
			r.f = f
		}
		return r.end, -1, 0, wake, nil
	}
	if r.f == nil {
		return 0, -1, 0, wake, nil // not begun
	}
	return n, k, ep, wake, nil
}

// errDropped fails a reader that sent bytes of a chunk the writer dropped
// before it landed (see Incoming.Arriving).
var errDropped = errors.New("incoming chunk dropped before it was verified: being received again")

// follow checks, after a read, that the unverified bytes of the chunk the
// reader is in (if any) were not dropped meanwhile, nor the file begun
// again or abandoned (a later pull reuses the part file).
func (r *arrivalReader) follow() error {
	if r.partial < 0 {
		return nil
	}
	r.in.mu.Lock()
	defer r.in.mu.Unlock()
	a := r.a
	if a.epoch[r.partial] != r.epoch || a.failed || r.in.aborted != nil || (r.f != nil && r.attempt != a.attempt) {
		return errDropped
	}
	return nil
}

// waitMore blocks until wake is closed (the file changed), the wait bound
// passes, or the reader's context ends.
func (r *arrivalReader) waitMore(wake <-chan struct{}) error {
	t := time.NewTimer(r.in.wait)
	defer t.Stop()
	select {
	case <-wake:
		return nil
	case <-t.C:
		return fmt.Errorf("%w for %v", ErrArrivalStalled, r.in.wait)
	case <-r.ctx.Done():
		return r.ctx.Err()
	}
}

func (r *arrivalReader) Close() error {
	if r.f != nil {
		return r.f.Close()
	}
	return nil
}

// dupFile returns a second, independent handle on the open file f.
func dupFile(f *os.File) (*os.File, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("dup %s: %w", f.Name(), err)
	}
	var (
		fd   int
		derr error
	)
	if err := rc.Control(func(s uintptr) { fd, derr = unix.Dup(int(s)) }); err != nil {
		return nil, fmt.Errorf("dup %s: %w", f.Name(), err)
	}
	if derr != nil {
		return nil, fmt.Errorf("dup %s: %w", f.Name(), derr)
	}
	unix.CloseOnExec(fd)
	return os.NewFile(uintptr(fd), f.Name()), nil
}
