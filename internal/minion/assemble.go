package minion

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/fanout/fanout/internal/apply"
	"github.com/fanout/fanout/internal/chunk"
	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/manifest"
)

// maxRun bounds the bytes one request asks for: a run of consecutive
// chunks, so a source that dies costs at most this much again.
const maxRun = 8 << 20

// assembler builds the files of several chunks of a format 3 pull (an
// apply.Assembler): every chunk this host already has (in the older version
// of the file, in a file renamed or copied, in another file of the tree)
// is copied locally, and only the rest crosses the network, as ranges of
// consecutive chunks. Each chunk is verified against its hash before it is
// written, whichever way it came.
type assembler struct {
	m    *Minion
	src  *source
	root string

	mu    sync.Mutex
	local map[string]chunkAt // chunk hash → bytes on this host with that hash

	copied, fetched atomic.Int64 // bytes copied locally, and received
}

// chunkAt is where a chunk's bytes are on this host.
type chunkAt struct {
	path     string // OS path
	off, len int64
}

func newAssembler(m *Minion, src *source, root string) *assembler {
	return &assembler{m: m, src: src, root: root, local: map[string]chunkAt{}}
}

// index learns the chunks of the local files a plan may reuse: the older
// versions of the files it fetches, the files it does not keep (renamed or
// moved: they may hold the new files' content), and every local file whose
// chunk list is known already (unchanged files, for content that repeats).
// Chunk lists come from the hash cache when the file is unchanged since it
// was hashed.
func (a *assembler) index(ctx context.Context, local, remote *manifest.Manifest, plan *manifest.Plan) error {
	p := remote.Chunking
	if p == nil {
		return nil
	}
	fetched := map[string]bool{}
	for _, e := range plan.Entries(manifest.OpFetch) {
		fetched[e.Path] = true
	}
	for _, l := range local.Entries {
		if l.Type != manifest.File || l.Size == 0 {
			continue
		}
		osPath := a.osPath(l.Path)
		chunks := l.ChunkList()
		if l.Hash == "" {
			// Not hashed by the diff (its size differs from the remote
			// file's, or it is not in the remote tree): worth hashing only
			// if it may hold what the plan fetches.
			if _, inRemote := remote.Lookup(l.Path); inRemote && !fetched[l.Path] {
				continue
			}
			fi, err := os.Lstat(osPath)
			if err != nil || !fi.Mode().IsRegular() {
				continue
			}
			hash, cs, ok := a.m.cache.GetChunks(osPath, fi, *p)
			if !ok {
				var err error
				if hash, cs, err = manifest.HashChunks(ctx, osPath, *p); err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					continue // gone or unreadable: fetched instead
				}
				a.m.cache.PutChunks(osPath, fi, *p, hash, cs)
			}
			if len(cs) == 0 {
				cs = []manifest.Chunk{{Len: l.Size, Hash: hash}}
			}
			chunks = cs
		}
		for _, c := range chunks {
			a.local[c.Hash] = chunkAt{path: osPath, off: c.Off, len: c.Len}
		}
	}
	return nil
}

func (a *assembler) osPath(p string) string { return osPath(a.root, p) }

// Assemble implements apply.Assembler.
func (a *assembler) Assemble(ctx context.Context, e manifest.Entry, f *os.File, landed func(prefix int64)) error {
	chunks := e.Chunks
	done := make([]bool, len(chunks))
	prefix := 0 // chunks [0, prefix) are in place
	advance := func() {
		moved := false
		for prefix < len(chunks) && done[prefix] {
			prefix++
			moved = true
		}
		if moved {
			end := e.Size
			if prefix < len(chunks) {
				end = chunks[prefix].Off
			}
			landed(end)
		}
	}
	// Chunks already on this host, and chunks that repeat within the file
	// once one copy is in.
	buf := make([]byte, 0, maxChunk(chunks))
	for i, c := range chunks {
		a.mu.Lock()
		at, ok := a.local[c.Hash]
		a.mu.Unlock()
		if ok && a.copyChunk(at, f, c, &buf) == nil {
			done[i] = true
			a.copied.Add(c.Len)
		}
	}
	advance()
	for i := 0; i < len(chunks); {
		if done[i] {
			i++
			continue
		}
		j := i
		var n int64
		for j < len(chunks) && !done[j] && n+chunks[j].Len <= maxRun {
			n += chunks[j].Len
			j++
		}
		if j == i { // one chunk larger than a run
			j = i + 1
		}
		if err := a.fetchRun(ctx, e, f, chunks, i, j, done, advance); err != nil {
			return err
		}
		// A chunk fetched once serves its repeats in this file.
		for k := j; k < len(chunks); k++ {
			if done[k] {
				continue
			}
			for x := i; x < j; x++ {
				if chunks[x].Hash == chunks[k].Hash {
					at := chunkAt{path: f.Name(), off: chunks[x].Off, len: chunks[x].Len}
					if a.copyFrom(f, at, f, chunks[k], &buf) == nil {
						done[k] = true
						a.copied.Add(chunks[k].Len)
					}
					break
				}
			}
		}
		advance()
		i = j
	}
	for i, d := range done {
		if !d {
			return fmt.Errorf("%s: chunk %d not assembled", e.Path, i)
		}
	}
	// Other files of this pull may reuse these chunks once the file is in
	// place under its name.
	a.mu.Lock()
	for _, c := range chunks {
		if _, ok := a.local[c.Hash]; !ok {
			a.local[c.Hash] = chunkAt{path: a.osPath(e.Path), off: c.Off, len: c.Len}
		}
	}
	a.mu.Unlock()
	return nil
}

// fetchRun fetches chunks [i, j) of e from the pull's source into f, each
// verified before it is written; when the source dies mid-run it moves to
// another and asks again from the first chunk not in yet.
func (a *assembler) fetchRun(ctx context.Context, e manifest.Entry, f *os.File, chunks []manifest.Chunk, i, j int, done []bool, advance func()) error {
	for {
		for i < j && done[i] {
			i++
		}
		if i == j {
			return nil
		}
		cl := a.src.claim()
		if cl == nil {
			return errors.New("no source claimed")
		}
		w := &chunkWriter{f: f, e: e, chunks: chunks[i:j], first: i, done: done, advance: advance, fetched: &a.fetched,
			progress: a.m.progress}
		off, n := chunks[i].Off, chunks[j-1].Off+chunks[j-1].Len-chunks[i].Off
		_, err := a.m.client.FetchRange(ctx, cl.SourceAddr, a.src.gen, e.Path, off, n, a.m.cfg.Download.Writer(ctx, w))
		if werr := w.err; werr != nil {
			return werr // a bad chunk, or our own write failed
		}
		if err == nil || ctx.Err() != nil || verdict(ctx, err, false) != coord.SourceDead {
			return err
		}
		if serr := a.src.switchFrom(ctx, *cl, err); serr != nil {
			return fmt.Errorf("%w (no other source: %w)", err, serr)
		}
	}
}

// copyChunk copies chunk c from where at says this host has its bytes into
// f, if they still hash to c.Hash (the local file may have changed since it
// was indexed).
func (a *assembler) copyChunk(at chunkAt, f *os.File, c manifest.Chunk, buf *[]byte) error {
	src, err := os.OpenFile(at.path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer src.Close()
	return a.copyFrom(src, at, f, c, buf)
}

func (a *assembler) copyFrom(src *os.File, at chunkAt, f *os.File, c manifest.Chunk, buf *[]byte) error {
	if at.len != c.Len {
		return errors.New("length differs")
	}
	b := (*buf)[:c.Len]
	if _, err := src.ReadAt(b, at.off); err != nil {
		return err
	}
	if chunk.Hash(b).String() != c.Hash {
		return errors.New("changed since indexed")
	}
	_, err := f.WriteAt(b, c.Off)
	return err
}

func maxChunk(chunks []manifest.Chunk) int64 {
	var n int64
	for _, c := range chunks {
		n = max(n, c.Len)
	}
	return n
}

// chunkWriter receives a run of consecutive chunks of a file as one stream,
// and writes each into the file at its offset once its bytes hash to the
// chunk's hash: an unverified byte never reaches the file. A bad chunk
// stops the stream with *apply.HashMismatchError.
type chunkWriter struct {
	f        *os.File
	e        manifest.Entry
	chunks   []manifest.Chunk
	first    int // index of chunks[0] in the file
	done     []bool
	advance  func()
	fetched  *atomic.Int64
	progress func(int64)

	k   int    // chunk being received
	buf []byte // its bytes so far
	err error
}

func (w *chunkWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n := 0
	for len(p) > 0 {
		if w.k == len(w.chunks) {
			w.err = fmt.Errorf("%s: more bytes than the chunks asked for", w.e.Path)
			return n, w.err
		}
		c := w.chunks[w.k]
		take := min(int64(len(p)), c.Len-int64(len(w.buf)))
		w.buf = append(w.buf, p[:take]...)
		p = p[take:]
		n += int(take)
		if int64(len(w.buf)) < c.Len {
			continue
		}
		if got := chunk.Hash(w.buf).String(); got != c.Hash {
			w.err = &apply.HashMismatchError{Path: w.e.Path, Want: c.Hash, Got: got, WantSize: c.Len, GotSize: c.Len}
			return n, w.err
		}
		if _, err := w.f.WriteAt(w.buf, c.Off); err != nil {
			w.err = fmt.Errorf("write %s: %w", w.e.Path, err)
			return n, w.err
		}
		w.done[w.first+w.k] = true
		w.fetched.Add(c.Len)
		if w.progress != nil {
			w.progress(c.Len)
		}
		w.advance()
		w.k++
		w.buf = w.buf[:0]
	}
	return n, nil
}

var _ io.Writer = (*chunkWriter)(nil)
