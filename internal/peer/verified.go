package peer

import (
	"errors"
	"fmt"
	"io"
	"iter"
	"os"

	"github.com/fanout/fanout/internal/chunk"
	"github.com/fanout/fanout/internal/manifest"
)

// VerifyServed makes the server check what it reads from disk against the
// manifest it serves, chunk by chunk, before sending it: the origin's tree
// is the operator's and may change under a generation being pulled. A
// chunk that no longer matches is never sent: the request is answered 409
// ("changed on disk", which a puller takes as a source that cannot serve
// the file, never as bad bytes) or, mid-answer, broken off, and changed is
// told the path (the master then publishes the tree as it is now). Files
// whose chunks are larger than maxVerifiedChunk (whole-file hashes of
// formats 1 and 2 on big files) are sent as before: the size check only.
// Call it before Serve.
//
// It applies to the plain task; Task.VerifyServed to a named one.
func (s *Server) VerifyServed(changed func(path string)) { s.def.verifyServed(changed) }

func (v *view) verifyServed(changed func(path string)) {
	if changed == nil {
		changed = func(string) {}
	}
	v.verify.Store(&changed)
}

// verifier returns the callback of VerifyServed of the snapshot's task,
// or nil when off.
func (sv *served) verifier() func(string) {
	if p := sv.view.verify.Load(); p != nil {
		return *p
	}
	return nil
}

// maxVerifiedChunk bounds the chunk a verifying server holds in memory
// (format 3 chunks are at most 2 MiB).
const maxVerifiedChunk = 8 << 20

// errChanged says a file's bytes on disk are no longer those published.
var errChanged = errors.New("changed on disk since it was published")

// verifiable reports whether bytes [start, end) of e can be verified as
// served: every chunk they touch fits maxVerifiedChunk.
func verifiable(e manifest.Entry, start, end int64) bool {
	for _, c := range e.ChunkList() {
		if c.Off+c.Len > start && c.Off < end && c.Len > maxVerifiedChunk {
			return false
		}
	}
	return true
}

// copyVerified writes bytes [start, end) of file e, open as f, to w: it
// reads each chunk they touch whole, checks its hash, and writes the part
// in range. before, when set, is called once before the first write (to
// send headers). A chunk that does not match is an error wrapping
// errChanged, returned before anything of it is written.
//
// Over several chunks, reading and hashing run on a goroutine of their own,
// a chunk or two ahead of the writes, so the disk, the hash and the socket
// overlap instead of taking turns.
func copyVerified(w io.Writer, f *os.File, e manifest.Entry, start, end int64, before func()) (int64, error) {
	var touched []manifest.Chunk
	for _, c := range e.ChunkList() {
		if c.Off+c.Len > start && c.Off < end {
			touched = append(touched, c)
		}
	}
	if len(touched) < 2 {
		var buf []byte
		return sendChunks(w, start, end, before, func(yield func(readChunk) bool) {
			for _, c := range touched {
				if !yield(readVerified(f, e, c, &buf)) {
					return
				}
			}
		})
	}
	ahead := make(chan readChunk, 1)
	free := make(chan []byte, 3) // one being read, one waiting, one being written
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(ahead)
		bufs := 0
		for _, c := range touched {
			var buf []byte
			select {
			case buf = <-free:
			case <-stop:
				return
			default:
				if bufs < cap(free) {
					bufs++
				} else {
					select {
					case buf = <-free:
					case <-stop:
						return
					}
				}
			}
			r := readVerified(f, e, c, &buf)
			select {
			case ahead <- r:
			case <-stop:
				return
			}
			if r.err != nil {
				return
			}
		}
	}()
	defer func() {
		close(stop)
		<-done
	}()
	return sendChunks(w, start, end, before, func(yield func(readChunk) bool) {
		for r := range ahead {
			if !yield(r) {
				return
			}
			free <- r.buf
		}
	})
}

// readChunk is a chunk read and verified (or the error that stopped it):
// buf holds its bytes, from offset off of the file.
type readChunk struct {
	buf []byte
	off int64
	err error
}

// readVerified reads chunk c of e from f into *buf (grown as needed) and
// checks its hash.
func readVerified(f *os.File, e manifest.Entry, c manifest.Chunk, buf *[]byte) readChunk {
	want, err := chunk.ParseSum(c.Hash)
	if err != nil {
		return readChunk{err: err}
	}
	if int64(cap(*buf)) < c.Len {
		*buf = make([]byte, c.Len)
	}
	b := (*buf)[:c.Len]
	if _, err := f.ReadAt(b, c.Off); err != nil {
		if errors.Is(err, io.EOF) {
			return readChunk{err: fmt.Errorf("%s: %w (it shrank)", e.Path, errChanged)}
		}
		return readChunk{err: fmt.Errorf("read %s: %w", e.Path, err)}
	}
	if chunk.Hash(b) != want {
		return readChunk{err: fmt.Errorf("%s: chunk at %d: %w", e.Path, c.Off, errChanged)}
	}
	return readChunk{buf: b, off: c.Off}
}

// sendChunks writes to w the bytes in [start, end) of the verified chunks
// seq yields, in file order, and stops at the first error.
func sendChunks(w io.Writer, start, end int64, before func(), seq iter.Seq[readChunk]) (int64, error) {
	var written int64
	var err error
	seq(func(r readChunk) bool {
		if r.err != nil {
			err = r.err
			return false
		}
		lo, hi := max(start-r.off, 0), min(end-r.off, int64(len(r.buf)))
		if before != nil {
			before()
			before = nil
		}
		var n int
		n, err = w.Write(r.buf[lo:hi])
		written += int64(n)
		return err == nil
	})
	if err == nil && before != nil {
		before() // an empty range
	}
	return written, err
}
