package manifest

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/zeebo/blake3"

	"github.com/fanout/fanout/internal/chunk"
)

// A hashPool hashes files on every core for Build and FillHashes, while
// the caller goes on walking. Workers, GOMAXPROCS of them, each read and
// hash one file at a time; the caller collects the results once wait has
// returned and puts them in its own order.
//
// A big file in format 3 is read into blocks and cut there, one chunk
// after the other, and its chunks are hashed where they lie by chunk
// hashers, GOMAXPROCS goroutines that do nothing else. Cutting is
// sequential and slower than hashing, so a file of several segments
// (segmentSize) is cut by several readers at once, one a segment, and the
// cuts are then stitched into those a single reader would have made (see
// stitch). At most maxBig readers run at once (each holds a token of big;
// a worker that finds none hashes its big file alone), and their blocks
// come from a pool of 2·maxBig+2, so memory stays bounded whatever the
// file sizes. A chunk hasher only ever waits for work and a reader holds
// one block while it waits for another, so a reader always gets one.
type hashPool struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	params *chunk.Params // nil: whole-content hashes (formats 1 and 2)
	whole  bool          // also the whole-content hash of chunked files
	cache  *Cache

	jobs    chan *hashJob
	workers sync.WaitGroup

	// Big files in format 3; tasks is nil when they are not split.
	cutter    chunk.Cutter
	tasks     chan chunkTask
	hashers   sync.WaitGroup
	big       chan struct{} // a token for each big file being read
	blocks    chan *block   // free blocks
	nblocks   atomic.Int32  // blocks allocated
	maxBlocks int32
}

// hashJob is a file to hash; res is set by the worker that hashed it.
type hashJob struct {
	osPath string
	fi     fs.FileInfo
	res    fileHash
}

// chunkTask is a chunk of a big file for a chunk hasher: it stores the
// sum of data, which lies in blk, as chunk i of res and marks it done.
type chunkTask struct {
	data []byte
	blk  *block
	i    int
	res  *bigResult
	done *sync.WaitGroup
}

// bigResult collects the chunks cut from start on, as they come in:
// their lengths in order, and their sums as the chunk hashers fill them.
type bigResult struct {
	start int64
	whole chan string // the whole-content hash, when asked for

	mu   sync.Mutex
	lens []int64
	sums []chunk.Sum
}

// end is the offset where the last chunk cut ends.
func (r *bigResult) end() int64 {
	end := r.start
	for _, n := range r.lens {
		end += n
	}
	return end
}

// block is a piece of a big file as read, shared by its reader, the tasks
// of the chunks in it and the whole-content hasher; the last to let go of
// it returns it to the pool.
type block struct {
	data []byte // blockSize bytes
	refs atomic.Int32
}

// blockSize is the size of the blocks big files are read into: four of the
// largest chunks, so that the tail copied to the next block when a chunk
// could straddle two is less than a third of a block.
func blockSize(p *chunk.Params) int { return 4 * p.Max }

// newHashPool starts a pool that hashes files in the format params gives
// (nil: whole-content hashes), with their whole-content hash too when
// whole is set, and records results in cache when it is not nil. The
// caller must call wait.
func newHashPool(ctx context.Context, params *chunk.Params, whole bool, cache *Cache) *hashPool {
	n := runtime.GOMAXPROCS(0)
	ctx, cancel := context.WithCancelCause(ctx)
	p := &hashPool{ctx: ctx, cancel: cancel, params: params, whole: whole && params != nil, cache: cache,
		jobs: make(chan *hashJob, 4*n)}
	if params != nil && n > 1 {
		// A reader cuts at about half a core's worth of BLAKE3, so a
		// reader keeps about one and a half cores busy: as many readers
		// as cores, up to 8, leave no core idle when one big file is
		// cut in segments.
		maxBig := max(1, min(n, 8))
		p.cutter, _ = chunk.NewCutter(*params) // validated by the caller
		p.big = make(chan struct{}, maxBig)
		p.maxBlocks = int32(2*maxBig + 2)
		p.blocks = make(chan *block, p.maxBlocks)
		p.tasks = make(chan chunkTask)
		for range n {
			p.hashers.Add(1)
			go p.hashChunks()
		}
	}
	for range n {
		p.workers.Add(1)
		go p.work()
	}
	return p
}

// submit queues j, waiting while the workers are busy. It returns the
// pool's error once a file failed or ctx is done.
func (p *hashPool) submit(j *hashJob) error {
	select {
	case p.jobs <- j:
		return nil
	case <-p.ctx.Done():
		return context.Cause(p.ctx)
	}
}

// fail stops the pool with err: the files not yet hashed are skipped, and
// wait returns err.
func (p *hashPool) fail(err error) { p.cancel(err) }

// wait waits until every submitted file is hashed and the pool's
// goroutines have exited, and returns the first error.
func (p *hashPool) wait() error {
	close(p.jobs)
	p.workers.Wait()
	if p.tasks != nil {
		close(p.tasks)
		p.hashers.Wait()
	}
	var err error
	if p.ctx.Err() != nil {
		err = context.Cause(p.ctx)
	}
	p.cancel(nil)
	return err
}

// work is a worker: it hashes the files of jobs.
func (p *hashPool) work() {
	defer p.workers.Done()
	w := newHashWorker(p.ctx, p.params, p.whole)
	for j := range p.jobs {
		if p.ctx.Err() != nil {
			continue // failed or cancelled: drain
		}
		res, err := p.hash(w, j)
		if err != nil {
			p.fail(err)
			continue
		}
		j.res = res
		if p.cache != nil {
			p.cache.put(j.osPath, j.fi, p.params, res)
		}
	}
}

// hash hashes the file of j with w, or with the chunk hashers when it is
// big and fewer than maxBig big files are being read.
func (p *hashPool) hash(w *hashWorker, j *hashJob) (fileHash, error) {
	if p.tasks != nil && j.fi.Size() >= int64(blockSize(p.params)) {
		select {
		case p.big <- struct{}{}:
			defer func() { <-p.big }()
			return p.hashBig(w, j.osPath, j.fi.Size())
		default:
		}
	}
	return w.hash(j.osPath, j.fi.Size())
}

// hashChunks is a chunk hasher.
func (p *hashPool) hashChunks() {
	defer p.hashers.Done()
	h := blake3.New()
	for t := range p.tasks {
		sum := sum256(h, t.data)
		t.res.mu.Lock()
		t.res.sums[t.i] = sum
		t.res.mu.Unlock()
		p.release(t.blk)
		t.done.Done()
	}
}

// block returns a free block with one reference, allocating one while
// fewer than maxBlocks exist, else waiting for one.
func (p *hashPool) block() *block {
	var b *block
	select {
	case b = <-p.blocks:
	default:
		if p.nblocks.Add(1) <= p.maxBlocks {
			b = &block{data: make([]byte, blockSize(p.params))}
		} else {
			p.nblocks.Add(-1)
			b = <-p.blocks
		}
	}
	b.refs.Store(1)
	return b
}

// release drops a reference to b, freeing it with the last.
func (p *hashPool) release(b *block) {
	if b.refs.Add(-1) == 0 {
		p.blocks <- b // never blocks: blocks has room for every block there is
	}
}

// segmentSize is the least length of the segments a big file is cut in
// by readers working at once: 128 of the largest chunks (64 MiB with the
// default sizes), so the chunks cut twice where segments meet (usually
// one or two) cost under 1 %.
func segmentSize(p *chunk.Params) int64 { return 128 * int64(p.Max) }

// hashBig hashes a big file in format 3: readers cut its segments into
// blocks, the chunk hashers hash the chunks where they lie, and stitch
// joins the segments' cuts. When the whole-content hash is wanted, the
// file is one segment and a goroutine of its own hashes it from the same
// blocks, in order. The caller holds one token of p.big.
func (p *hashPool) hashBig(w *hashWorker, osPath string, size int64) (fileHash, error) {
	f, err := openRegular(osPath)
	if err != nil {
		return fileHash{}, fmt.Errorf("hash %s: %w", osPath, err)
	}
	defer f.Close()
	// More readers, as tokens allow: a segment each.
	nseg := 1
	if !p.whole {
		for int64(nseg+1)*segmentSize(p.params) <= size {
			select {
			case p.big <- struct{}{}:
				nseg++
				defer func() { <-p.big }()
				continue
			default:
			}
			break
		}
	}
	segs := make([]*bigResult, nseg)
	for k := range segs {
		// Segments start at multiples of the largest chunk: a run of
		// bytes with no cut point in it (zeros) is cut at every Max from
		// the file's start, so those cuts meet at once.
		start := size * int64(k) / int64(nseg)
		segs[k] = &bigResult{start: start - start%int64(p.params.Max)}
	}
	var pending sync.WaitGroup
	errs := make([]error, nseg)
	var readers sync.WaitGroup
	for k := 1; k < nseg; k++ {
		readers.Go(func() { errs[k] = p.cutSegment(f, size, segs[k], segs[k+1:], &pending) })
	}
	errs[0] = p.cutSegment(f, size, segs[0], segs[1:], &pending)
	readers.Wait()
	pending.Wait()
	if err := errors.Join(errs...); err != nil {
		return fileHash{}, fmt.Errorf("hash %s: %w", osPath, err)
	}
	var wholeHash string
	if p.whole {
		wholeHash = <-segs[0].whole
	}
	lens, sums, err := stitch(w, f, size, p.params, segs)
	if err != nil {
		return fileHash{}, fmt.Errorf("hash %s: %w", osPath, err)
	}
	if len(sums) == 0 {
		return fileHash{hash: chunk.Hash(nil).String()}, nil
	}
	return chunked(lens, sums, wholeHash), nil
}

// cutSegment reads f (size bytes) from res.start on into blocks and cuts
// them into chunks, recorded in res and handed to the chunk hashers
// (pending counts them), until a chunk ends at or past the start of the
// next segment, if any, or at the end of the file. With p.whole (one
// segment) it also computes the whole-content hash, sent on res.whole.
func (p *hashPool) cutSegment(f *os.File, size int64, res *bigResult, next []*bigResult, pending *sync.WaitGroup) error {
	stop := size
	if len(next) > 0 {
		stop = next[0].start
	}
	r := &sectionReader{ctx: p.ctx, f: f, off: res.start, size: size}
	type piece struct {
		data []byte
		blk  *block
	}
	var whole chan piece
	if p.whole {
		whole = make(chan piece, 64)
		res.whole = make(chan string, 1)
		go func() {
			h := blake3.New()
			for pc := range whole {
				h.Write(pc.data)
				p.release(pc.blk)
			}
			res.whole <- hex.EncodeToString(h.Sum(nil))
		}()
		defer close(whole)
	}
	maxChunk := p.params.Max
	blk := p.block()
	defer func() { p.release(blk) }()
	var start, end int // blk.data[start:end] is read and not yet cut
	pos := res.start
	eof := false
	for pos < stop {
		if end-start < maxChunk && !eof {
			if len(blk.data)-start < maxChunk {
				// The next chunk might not fit: carry the tail over.
				next := p.block()
				end = copy(next.data, blk.data[start:end])
				start = 0
				p.release(blk)
				blk = next
			}
			var err error
			for end-start < maxChunk && err == nil {
				var n int
				n, err = r.Read(blk.data[end:])
				end += n
			}
			if errors.Is(err, io.EOF) {
				eof, err = true, nil
			}
			if err != nil {
				return err
			}
		}
		if start == end {
			break
		}
		n := p.cutter.Cut(blk.data[start:end])
		data := blk.data[start : start+n]
		start += n
		pos += int64(n)
		res.mu.Lock()
		i := len(res.sums)
		res.lens = append(res.lens, int64(n))
		res.sums = append(res.sums, chunk.Sum{})
		res.mu.Unlock()
		blk.refs.Add(1)
		pending.Add(1)
		p.tasks <- chunkTask{data: data, blk: blk, i: i, res: res, done: pending}
		if whole != nil {
			blk.refs.Add(1)
			whole <- piece{data, blk}
		}
	}
	return nil
}

// stitch joins the chunks cut in segs (in order, the first starting at 0)
// into those one reader cutting f from its start would have made. A cut
// point depends only on where its chunk starts and the bytes after it, so
// once the cuts carried over from one segment reach a point where a chunk
// of the next starts, the next segment's cuts are the true ones from there
// on. Until they meet (usually within a chunk or two) stitch cuts and
// hashes the chunks itself, with w's hasher, reading f; a segment passed
// over whole is left out. Cuts meet at the first content-defined cut
// point, so where there is none for long (a run of zeros, whose cuts are
// all Max apart, from wherever the run's first chunk started), stitch
// cuts the whole run on one core: at worst the file costs what one reader
// would have, plus the segments' wasted work. It checks w's context
// between chunks.
func stitch(w *hashWorker, f *os.File, size int64, params *chunk.Params, segs []*bigResult) ([]int64, []chunk.Sum, error) {
	lens, sums := segs[0].lens, segs[0].sums
	pos := segs[0].end()
	cutter, _ := chunk.NewCutter(*params) // validated by the caller
	var buf []byte
	bridge := func() error {
		if err := w.ctx.Err(); err != nil {
			return err
		}
		if buf == nil {
			buf = make([]byte, params.Max)
		}
		m := int(min(int64(params.Max), size-pos))
		if _, err := f.ReadAt(buf[:m], pos); err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("shrank while it was hashed: %d bytes when listed", size)
			}
			return err
		}
		n := cutter.Cut(buf[:m])
		lens = append(lens, int64(n))
		sums = append(sums, sum256(w.h, buf[:n]))
		pos += int64(n)
		return nil
	}
	for _, s := range segs[1:] {
		off, j := s.start, 0
		for pos < size {
			for j < len(s.lens) && off < pos {
				off += s.lens[j]
				j++
			}
			if j == len(s.lens) {
				break // passed over: the next segment may meet
			}
			if off == pos {
				lens, sums = append(lens, s.lens[j:]...), append(sums, s.sums[j:]...)
				pos = s.end()
				break
			}
			if err := bridge(); err != nil {
				return nil, nil, err
			}
		}
	}
	for pos < size {
		if err := bridge(); err != nil {
			return nil, nil, err
		}
	}
	return lens, sums, nil
}

// hashWorker holds what one goroutine needs to hash files one after the
// other without allocating per file.
type hashWorker struct {
	ctx    context.Context
	params *chunk.Params
	whole  bool
	buf    []byte         // read buffer for whole-content hashes
	c      *chunk.Chunker // nil without params
	h      *blake3.Hasher
	wh     *blake3.Hasher // whole-content hash of chunked files
	lens   []int64
	sums   []chunk.Sum
}

func newHashWorker(ctx context.Context, params *chunk.Params, whole bool) *hashWorker {
	w := &hashWorker{ctx: ctx, params: params, whole: whole, h: blake3.New()}
	if params != nil {
		// Params were validated by the caller; New checks them again.
		w.c, _ = chunk.New(nil, *params)
		w.wh = blake3.New()
	}
	return w
}

// open opens the regular file at path for hashing its first size bytes.
func (w *hashWorker) open(path string, size int64) (*os.File, io.Reader, error) {
	f, err := openRegular(path)
	if err != nil {
		return nil, nil, fmt.Errorf("hash %s: %w", path, err)
	}
	return f, &sizedReader{ctx: w.ctx, f: f, size: size, left: size}, nil
}

// hash returns the fileHash of the first size bytes of the regular file at
// path; the file must not be shorter.
func (w *hashWorker) hash(path string, size int64) (fileHash, error) {
	f, r, err := w.open(path, size)
	if err != nil {
		return fileHash{}, err
	}
	defer f.Close()
	if w.params == nil {
		if w.buf == nil {
			w.buf = make([]byte, 1<<20)
		}
		w.h.Reset()
		if _, err := io.CopyBuffer(w.h, r, w.buf); err != nil {
			return fileHash{}, fmt.Errorf("hash %s: %w", path, err)
		}
		return fileHash{hash: hex.EncodeToString(w.h.Sum(nil))}, nil
	}
	// A file no longer than the minimum chunk size is one chunk, hashed
	// once for both formats.
	whole := w.whole && size > int64(w.params.Min)
	w.wh.Reset()
	w.lens, w.sums = w.lens[:0], w.sums[:0]
	w.c.Reset(r)
	for {
		ch, err := w.c.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fileHash{}, fmt.Errorf("hash %s: %w", path, err)
		}
		w.lens = append(w.lens, int64(ch.Len()))
		w.sums = append(w.sums, sum256(w.h, ch.Data))
		if whole {
			w.wh.Write(ch.Data)
		}
	}
	if len(w.sums) == 0 {
		return fileHash{hash: chunk.Hash(nil).String()}, nil
	}
	wholeHash := ""
	if whole && len(w.sums) > 1 {
		wholeHash = hex.EncodeToString(w.wh.Sum(nil))
	}
	return chunked(w.lens, w.sums, wholeHash), nil
}

// sum256 returns the BLAKE3-256 of data, computed with h. It is
// chunk.Hash without the hasher state (8 KiB) that blake3.Sum256 sets up
// per call, which shows with small files.
func sum256(h *blake3.Hasher, data []byte) (sum chunk.Sum) {
	h.Reset()
	h.Write(data)
	h.Sum(sum[:0])
	return sum
}

// sizedReader reads the first size bytes of a file, checking ctx before
// each read; a file that ends sooner is an error, not a short hash.
type sizedReader struct {
	ctx        context.Context
	f          *os.File
	size, left int64
}

func (r *sizedReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.f.Read(p)
	r.left -= int64(n)
	if errors.Is(err, io.EOF) {
		if r.left > 0 {
			return n, fmt.Errorf("shrank while it was hashed: %d bytes, %d when listed", r.size-r.left, r.size)
		}
		err = nil
	}
	return n, err
}

// sectionReader reads a file from off up to size, checking ctx before
// each read; a file that ends sooner is an error, not a short hash.
type sectionReader struct {
	ctx       context.Context
	f         *os.File
	off, size int64
}

func (r *sectionReader) Read(p []byte) (int, error) {
	if r.off >= r.size {
		return 0, io.EOF
	}
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	if int64(len(p)) > r.size-r.off {
		p = p[:r.size-r.off]
	}
	n, err := r.f.ReadAt(p, r.off)
	r.off += int64(n)
	if errors.Is(err, io.EOF) {
		if r.off < r.size {
			return n, fmt.Errorf("shrank while it was hashed: %d bytes, %d when listed", r.off, r.size)
		}
		err = nil
	}
	return n, err
}

// openRegular opens the regular file at path for reading. It never follows
// a symlink at path, and never blocks opening a fifo put there: both are
// errors.
func openRegular(path string) (*os.File, error) {
	// O_NONBLOCK only matters for a fifo (open would wait for a writer);
	// reads of a regular file are not affected by it.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("not a regular file (%s)", fi.Mode().Type())
	}
	return f, nil
}
