package peer

import (
	"errors"
	"fmt"
	"io"
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
func (s *Server) VerifyServed(changed func(path string)) {
	if changed == nil {
		changed = func(string) {}
	}
	s.verify.Store(&changed)
}

// verifier returns the callback of VerifyServed, or nil when off.
func (s *Server) verifier() func(string) {
	if p := s.verify.Load(); p != nil {
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
func copyVerified(w io.Writer, f *os.File, e manifest.Entry, start, end int64, before func()) (int64, error) {
	var written int64
	var buf []byte
	for _, c := range e.ChunkList() {
		if c.Off+c.Len <= start || c.Off >= end {
			continue
		}
		want, err := chunk.ParseSum(c.Hash)
		if err != nil {
			return written, err
		}
		if int64(cap(buf)) < c.Len {
			buf = make([]byte, c.Len)
		}
		b := buf[:c.Len]
		if _, err := f.ReadAt(b, c.Off); err != nil {
			if errors.Is(err, io.EOF) {
				return written, fmt.Errorf("%s: %w (it shrank)", e.Path, errChanged)
			}
			return written, fmt.Errorf("read %s: %w", e.Path, err)
		}
		if chunk.Hash(b) != want {
			return written, fmt.Errorf("%s: chunk at %d: %w", e.Path, c.Off, errChanged)
		}
		lo, hi := max(start-c.Off, 0), min(end-c.Off, c.Len)
		if before != nil {
			before()
			before = nil
		}
		n, err := w.Write(b[lo:hi])
		written += int64(n)
		if err != nil {
			return written, err
		}
	}
	if before != nil {
		before() // an empty range
	}
	return written, nil
}
