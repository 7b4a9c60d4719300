package minion

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/fanout/fanout/internal/apply"
	"github.com/fanout/fanout/internal/chunk"
	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/manifest"
	"github.com/fanout/fanout/internal/peer"
)

// assembler builds the files of several chunks of a format 3 pull (an
// apply.Assembler): every chunk this host already has (in the older version
// of the file, in a file renamed or copied, in another file of the tree)
// is copied locally, and only the rest crosses the network, as ranges of
// consecutive chunks. Each chunk is verified against its hash before it
// lands, whichever way it came; a chunk crossing the network may be written
// as it arrives, unverified, for the hosts streaming the file from this one
// (see job.stream), and lands only with the bytes verified.
type assembler struct {
	m    *Minion
	sw   *swarm
	root string

	mu    sync.Mutex
	local map[string]chunkAt // chunk hash → bytes on this host with that hash
	jobs  map[*job]bool      // the files being fetched now (see othersFresh)

	// compress asks sources for zstd frames (this host's --compress, or
	// the generation's).
	compress bool

	bufs sync.Pool // of *[]byte: chunk buffers of the chunkWriters

	// noProgress is noProgressAfter (tests shorten it).
	noProgress time.Duration

	copied, fetched atomic.Int64 // bytes copied locally, and received
	wire            atomic.Int64 // bytes the fetches carried on the network
	resumed         atomic.Int64 // of copied: kept in place from a part file (see resume.go)
}

// chunkAt is where a chunk's bytes are on this host.
type chunkAt struct {
	path     string // OS path
	off, len int64
}

func newAssembler(m *Minion, sw *swarm, root string) *assembler {
	return &assembler{m: m, sw: sw, root: root, local: map[string]chunkAt{}, jobs: map[*job]bool{}, noProgress: noProgressAfter}
}

// noProgressAfter: a file of a chunked pull that waits for chunks while
// none lands for this long, and no source confirms the next is coming
// (see assembler.behind), fails the pull (errNoProgress), which starts
// again and keeps the chunks it verified (resume.go). A backstop for a
// stall that no request's own timeout sees (a chunk asked of no source:
// see skipMine); longer than any wait the protocol has, a relay upstream
// switching sources waits four leases (a minute by default) at most.
const noProgressAfter = 5 * time.Minute

// errNoProgress fails a pull whose file saw no chunk land for
// noProgressAfter.
var errNoProgress = errors.New("the pull stalled")

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

// indexTree learns the chunks of man's files in the tree at root (the
// live release beside the one a pull builds), where the index of the
// pull's own tree has none: a changed file is built from its older
// version there. A copy verifies each chunk's hash, so a file changed
// since costs a fetch, never a bad byte.
func (a *assembler) indexTree(root string, man *manifest.Manifest, p *chunk.Params) {
	if man == nil || man.Chunking == nil || p == nil || *man.Chunking != *p {
		return
	}
	for _, e := range man.Entries {
		if e.Type != manifest.File || e.Size == 0 {
			continue
		}
		p := osPath(root, e.Path)
		for _, c := range e.ChunkList() {
			if _, ok := a.local[c.Hash]; !ok {
				a.local[c.Hash] = chunkAt{path: p, off: c.Off, len: c.Len}
			}
		}
	}
}

func (a *assembler) osPath(p string) string { return osPath(a.root, p) }

// Assemble implements apply.Assembler: chunks already on this host are
// copied, each distinct missing chunk is fetched once, from the pull's
// sources at once (see fetchAll), and repeats are copied from the first
// copy.
func (a *assembler) Assemble(ctx context.Context, e manifest.Entry, f *os.File, sink apply.ChunkSink) error {
	chunks := e.Chunks
	j := &job{e: e, f: f, chunks: chunks, done: make([]bool, len(chunks)), inflight: make([]int, len(chunks)),
		first: make([]int, len(chunks)), sink: sink, changed: make(chan struct{}, 1)}
	if sink != nil {
		j.exposed, j.streamer = make([]int64, len(chunks)), make([]*chunkWriter, len(chunks))
	}
	seen := map[string]int{}
	for i, c := range chunks {
		j.first[i] = i
		if k, ok := seen[c.Hash]; ok {
			j.first[i] = k
		} else {
			seen[c.Hash] = i
		}
	}
	buf := make([]byte, 0, maxChunk(chunks))
	for i, c := range chunks {
		if j.first[i] != i {
			continue
		}
		a.mu.Lock()
		at, ok := a.local[c.Hash]
		a.mu.Unlock()
		if ok && a.copyChunk(at, f, c, &buf) == nil {
			a.copied.Add(c.Len)
			j.land(i)
		}
	}
	if !j.complete() {
		if err := a.fetchAll(ctx, j); err != nil {
			return err
		}
	}
	for i, c := range chunks {
		if k := j.first[i]; k != i {
			at := chunkAt{path: f.Name(), off: chunks[k].Off, len: chunks[k].Len}
			if err := a.copyFrom(f, at, f, c, &buf); err != nil {
				return fmt.Errorf("%s: chunk %d repeats chunk %d: %w", e.Path, i, k, err)
			}
			a.copied.Add(c.Len)
			j.land(i)
		}
	}
	for i, d := range j.done {
		if !d {
			return fmt.Errorf("%s: chunk %d not assembled", e.Path, i)
		}
	}
	// Other files of this pull may reuse these chunks once the file is in
	// place under its name.
	a.mu.Lock()
	for _, c := range chunks {
		if at, ok := a.local[c.Hash]; !ok || at.path == f.Name() {
			a.local[c.Hash] = chunkAt{path: a.osPath(e.Path), off: c.Off, len: c.Len}
		}
	}
	a.mu.Unlock()
	return nil
}

// runBytes bounds the chunks one request to the leader asks for when the
// pull takes one source (--sources 1; with more, maxRun, see work): large
// enough that a request moves much more than it costs.
const runBytes = 4 << 20

// job is the fetching of one file's missing chunks.
type job struct {
	e      manifest.Entry
	f      *os.File
	chunks []manifest.Chunk
	first  []int // index of the first chunk with the same hash (itself if none before)
	// sink hears of chunks as they arrive and land (nil: nobody serves
	// the file on, and chunks are written only once verified).
	sink apply.ChunkSink

	mu       sync.Mutex
	done     []bool
	low      int // chunks before it are all done (or repeats): take starts there
	inflight []int
	changed  chan struct{} // a chunk landed or a request ended
	lastLand time.Time     // when a chunk last landed (or fetchAll began)
	// Streaming (with a sink, see stream): exposed[i] bytes of chunk i,
	// not landed, are in f unverified and announced to sink as arriving;
	// streamer[i] is the writer adding to them (nil: none now).
	exposed  []int64
	streamer []*chunkWriter
	// began (under mu) and arrived: when bytes of the file first came
	// from a source other than a probe, and how many have come (see
	// inflow).
	began   time.Time
	arrived atomic.Int64
}

// flow is what a file's sources other than probes have brought: when
// their first bytes arrived (zero: none yet) and how many bytes have
// arrived in all, verified or not (see rescueGate.judge).
type flow struct {
	began time.Time
	bytes int64
}

// inflow reports what j's sources other than probes have brought.
func (j *job) inflow() flow {
	j.mu.Lock()
	defer j.mu.Unlock()
	return flow{began: j.began, bytes: j.arrived.Load()}
}

// arrive counts n bytes of j arrived from a source other than a probe;
// first: the first bytes of a request.
func (j *job) arrive(n int, first bool) {
	if first {
		j.mu.Lock()
		if j.began.IsZero() {
			j.began = time.Now()
		}
		j.mu.Unlock()
	}
	j.arrived.Add(int64(n))
}

// missing reports how many distinct chunks have yet to land, and the
// offset of the first.
func (j *job) missing() (n int, first int64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	first = -1
	for i, d := range j.done {
		if !d && j.first[i] == i {
			if n == 0 {
				first = j.chunks[i].Off
			}
			n++
		}
	}
	return n, first
}

// coming records that a source confirmed the chunk a request waited for is
// still to come to it (see assembler.behind): the file's wait for its next
// chunk is then the chain's, and noProgressAfter counts from now.
func (j *job) coming() {
	j.mu.Lock()
	j.lastLand = time.Now()
	j.mu.Unlock()
}

// sinceLanded is how long ago a chunk last landed (or a source confirmed
// the next is coming).
func (j *job) sinceLanded(now time.Time) time.Duration {
	j.mu.Lock()
	defer j.mu.Unlock()
	return now.Sub(j.lastLand)
}

func (j *job) complete() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	for i, d := range j.done {
		if !d && j.first[i] == i {
			return false
		}
	}
	return true
}

// land records chunk i written and verified (its repeats are copied at the
// end); false when it had landed already (endgame: two sources sent it).
func (j *job) land(i int) bool {
	j.mu.Lock()
	if j.done[i] {
		j.mu.Unlock()
		return false
	}
	j.done[i] = true
	j.lastLand = time.Now()
	j.mu.Unlock()
	j.announce(i)
	return true
}

// announce tells the sink (if any) and the workers that chunk i landed.
func (j *job) announce(i int) {
	if j.sink != nil {
		j.sink.Landed(i)
	}
	j.signal()
}

// streamStep is how many bytes of a chunk a writer receives before it
// writes and announces them (stream): each step costs the hosts streaming
// the file on from here a read, a write and a flush.
const streamStep = 32 << 10

// RelayHoldBack is the most bytes of a chunk this host is receiving that
// the hosts streaming the file from it wait for, beyond the network's own
// delay: a step not yet written, and the chunk's tail until it is
// verified. Each relay of a pipelined chain adds about its time at the
// link's rate to the chain (test/sim models it).
const RelayHoldBack = streamStep + peer.StreamTail

// stream writes b, the first bytes of chunk i as writer w received them
// (not verified yet), into the file past those there already and announces
// them to the sink, so the hosts pulling from this one get all of the
// chunk but its tail (peer.StreamTail) before it lands: a relay adds a
// step's time to a chain, not a chunk's. Only one writer streams a chunk:
// the first to ask while none does. One that takes up a chunk another left
// (its request ended) keeps the bytes there only if its own are the same,
// and else drops them first (readers that sent them fail); it waits until
// it has as many.
func (j *job) stream(w *chunkWriter, i int, b []byte) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.streamer == nil || j.done[i] || (j.streamer[i] != nil && j.streamer[i] != w) {
		return nil
	}
	c := j.chunks[i]
	x := j.exposed[i]
	if j.streamer[i] == nil {
		if int64(len(b)) < x {
			return nil
		}
		if err := j.keepIfSame(i, b); err != nil {
			return err
		}
		j.streamer[i], x = w, j.exposed[i]
	}
	if int64(len(b)) <= x {
		return nil
	}
	if _, err := j.f.WriteAt(b[x:], c.Off+x); err != nil {
		return fmt.Errorf("write %s: %w", j.e.Path, err)
	}
	j.exposed[i] = int64(len(b))
	j.sink.Arriving(i, j.exposed[i])
	return nil
}

// keepIfSame drops the bytes of chunk i in the file that were announced
// unverified unless b (at least as many of the chunk's first bytes) starts
// with them (j.mu held).
func (j *job) keepIfSame(i int, b []byte) error {
	x := j.exposed[i]
	if x == 0 {
		return nil
	}
	had := make([]byte, x)
	if _, err := j.f.ReadAt(had, j.chunks[i].Off); err != nil {
		return fmt.Errorf("read %s: %w", j.e.Path, err)
	}
	if !bytes.Equal(had, b[:x]) {
		j.exposed[i] = 0
		j.sink.Arriving(i, 0)
	}
	return nil
}

// unstream ends w's streaming of chunk i. With bad (they failed
// verification, their source sent a bad chunk, or this host failed to
// write) the bytes announced of the chunk are dropped, whoever wrote the
// first of them; otherwise they stay for the next
// writer of the chunk to take up (see stream): cutting off the hosts that
// stream it from here because this host moved a request elsewhere would
// cost them the chunk again.
func (j *job) unstream(w *chunkWriter, i int, bad bool) {
	if j.streamer == nil {
		return
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.streamer[i] != w {
		return
	}
	j.streamer[i] = nil
	if bad && j.exposed[i] > 0 {
		j.exposed[i] = 0
		j.sink.Arriving(i, 0)
	}
}

// put lands chunk i, whose verified bytes b writer w holds: written into
// the file unless w streamed them all there already. Bytes another writer
// streamed stay if b starts with them, and are dropped otherwise, before b
// is written. False: it had landed already.
func (j *job) put(w *chunkWriter, i int, b []byte) (bool, error) {
	if j.streamer == nil {
		if j.isDone(i) {
			return false, nil
		}
		if _, err := j.f.WriteAt(b, j.chunks[i].Off); err != nil {
			return false, fmt.Errorf("write %s: %w", j.e.Path, err)
		}
		return j.land(i), nil
	}
	j.mu.Lock()
	if j.done[i] {
		j.mu.Unlock()
		return false, nil
	}
	if j.streamer[i] != w || j.exposed[i] != int64(len(b)) {
		err := j.keepIfSame(i, b)
		if err == nil {
			_, err = j.f.WriteAt(b, j.chunks[i].Off)
		}
		if err != nil {
			j.mu.Unlock()
			return false, fmt.Errorf("write %s: %w", j.e.Path, err)
		}
	}
	// Landed in the same critical section: a writer that found the chunk
	// neither streamed nor done in between would stream its own bytes
	// over the verified ones.
	j.streamer[i], j.exposed[i] = nil, 0
	j.done[i] = true
	j.lastLand = time.Now()
	j.mu.Unlock()
	j.announce(i)
	return true, nil
}

// prefix is how many bytes from the start of the file have landed (or are
// repeats, copied at the end) without a gap.
func (j *job) prefix() int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	for j.low < len(j.chunks) && (j.done[j.low] || j.first[j.low] != j.low) {
		j.low++
	}
	if j.low == len(j.chunks) {
		return j.e.Size
	}
	return j.chunks[j.low].Off
}

func (j *job) isDone(i int) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.done[i]
}

func (j *job) signal() {
	select {
	case j.changed <- struct{}{}:
	default:
	}
}

// endgame is how take doubles a request in flight once every chunk of a
// file has been asked of a source.
type endgame int

const (
	endgameNone  endgame = iota // doubles nothing (see assembler.othersFresh)
	endgameBack                 // doubles the run that ends at the last chunk in flight
	endgameFront                // doubles the run at the front (a rescue source)
)

// take picks the next run of consecutive chunks, of limit bytes at most
// (one chunk at least), for a source that has the chunks have marks (nil:
// all): chunks neither landed nor asked of another source. With none left
// it doubles a request in flight (the endgame: the last chunks come from
// whichever source is faster; with eg endgameNone it takes nothing then),
// taking the run that ends at the last such chunk: the source whose
// request it doubles sends its run from the front, the two meet, and the
// request whose rest landed ends there (see chunkWriter.Write). Doubled
// from the front, both sent the same chunks at once, to the end of the
// shorter run: in a tree pull behind a slow host's own link (B/8 on the
// netbed), where each of four files at a time has an endgame, that host
// fetched a third more than the tree, and took 1.47-1.55 x its floor
// (1.13-1.15 from the back). A rescue source (endgameFront) still doubles
// from the front: it is there to step around a slow parent, whose run
// holds the front of the stream that the hosts behind this one wait on
// (doubled from the back, the host behind a bypasser finished 0.3 s after
// it in some runs of row 5). It returns the run [i, k), or i == k when
// there is nothing for this source. From the back (back), it takes the run
// that ends at the last chunk not asked of another source instead: a
// request that may be cut off (a probe) then leaves no hole just ahead of
// the stream, which this host's own pullers wait on (they stream the file
// in order).
func (j *job) take(have []bool, mine map[int]bool, limit int64, back bool, eg endgame) (int, int) {
	j.mu.Lock()
	defer j.mu.Unlock()
	ok := func(i int, doubling bool) bool {
		if j.done[i] || j.first[i] != i || (have != nil && !have[i]) || mine[i] {
			return false
		}
		if doubling {
			return j.inflight[i] == 1
		}
		return j.inflight[i] == 0
	}
	for j.low < len(j.chunks) && (j.done[j.low] || j.first[j.low] != j.low) {
		j.low++
	}
	for _, doubling := range []bool{false, true} {
		if doubling && eg == endgameNone {
			break
		}
		if back || (doubling && eg == endgameBack) {
			for k := len(j.chunks) - 1; k >= j.low; k-- {
				if !ok(k, doubling) {
					continue
				}
				i, n := k, j.chunks[k].Len
				for i > j.low && ok(i-1, doubling) && n+j.chunks[i-1].Len <= limit {
					i--
					n += j.chunks[i].Len
				}
				for x := i; x <= k; x++ {
					j.inflight[x]++
				}
				return i, k + 1
			}
			continue
		}
		for i := j.low; i < len(j.chunks); i++ {
			if !ok(i, doubling) {
				continue
			}
			k, n := i, int64(0)
			for k < len(j.chunks) && ok(k, doubling) && (k == i || n+j.chunks[k].Len <= limit) {
				n += j.chunks[k].Len
				j.inflight[k]++
				k++
			}
			return i, k
		}
	}
	return 0, 0
}

// fresh reports whether j has a chunk to fetch that no source was asked
// for.
func (j *job) fresh() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	for i := j.low; i < len(j.chunks); i++ {
		if !j.done[i] && j.first[i] == i && j.inflight[i] == 0 {
			return true
		}
	}
	return false
}

// othersFresh reports whether a file of the pull other than j, being
// fetched now, has a chunk no source was asked for. The endgame is the
// pull's, not a file's: while another file has chunks to fetch, a source
// doubling a request for j's last ones takes the link from them, and
// pays for it with bytes that arrive twice. On the netbed's slow host (a
// link of B/8) pulling a tree of eight 4 MiB files, four at a time, each
// file had its own endgame: the host fetched 1.2-2.1 MB more than the
// 33.5 MB tree and took 1.13-1.16 x its floor (median 1.15, 10 runs);
// with this and the leader's shorter runs (see work), 0.5-1.4 MB and
// 1.09-1.18 (median 1.11, 11 runs). Alone, this left the others nothing
// to take from a file the leader had been asked for whole, and the last
// file came from the leader's one stream (1.16-1.32 in 3 runs). A rescue
// source still doubles the front of a file's stream (endgameFront, see
// work): that is what it is there for.
func (a *assembler) othersFresh(j *job) bool {
	a.mu.Lock()
	others := make([]*job, 0, len(a.jobs))
	for o := range a.jobs {
		if o != j {
			others = append(others, o)
		}
	}
	a.mu.Unlock()
	for _, o := range others {
		if o.fresh() {
			return true
		}
	}
	return false
}

func (j *job) untake(i, k int) {
	j.mu.Lock()
	for x := i; x < k; x++ {
		j.inflight[x]--
	}
	j.mu.Unlock()
	j.signal()
}

// fetchAll fetches the missing chunks of j from every source of the pull at
// once, each source asked for runs it has, until every chunk landed. A
// source that fails is replaced (the pull's own claim switches; an extra
// one is given back with its verdict); a bad chunk from the pull's own
// source, or a failure of this host, ends the file with the error.
func (a *assembler) fetchAll(ctx context.Context, j *job) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	a.mu.Lock()
	a.jobs[j] = true
	a.mu.Unlock()
	defer func() {
		cancel() // requests still in flight (the endgame's doubles) end
		wg.Wait()
		a.mu.Lock()
		delete(a.jobs, j)
		a.mu.Unlock()
	}()
	errc := make(chan error, 1)
	// working: the sources a worker fetches from now. A worker that ends
	// leaves it, so a source claimed again under the same slot (the pull's
	// own source back after a restart) gets a new worker.
	working := map[*feed]bool{}
	exited := make(chan *feed)
	start := func() {
		for _, p := range a.sw.peers() {
			if !working[p] {
				working[p] = true
				wg.Go(func() {
					a.work(ctx, j, p, errc)
					select {
					case exited <- p:
					case <-ctx.Done():
					}
				})
			}
		}
	}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	j.mu.Lock()
	j.lastLand = time.Now()
	j.mu.Unlock()
	for {
		start()
		if j.complete() {
			return nil
		}
		if d := j.sinceLanded(time.Now()); d > a.noProgress {
			n, first := j.missing()
			var srcs []string
			for _, p := range a.sw.peers() {
				srcs = append(srcs, p.cl.Slot)
			}
			a.m.cfg.Log.WithFields(logrus.Fields{"path": j.e.Path, "missing": n, "first_missing": first, "sources": srcs}).
				Warn("no chunk landed for " + d.Round(time.Second).String() + "; the pull starts again, keeping what it verified")
			return fmt.Errorf("%s: %w: %d chunks missing from byte %d, none landed for %v from %v", j.e.Path, errNoProgress, n, first, d.Round(time.Second), srcs)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errc:
			return err
		case p := <-exited:
			delete(working, p)
		case <-j.changed:
		case <-a.sw.wake:
		case <-tick.C:
		}
	}
}

// work fetches runs of j from source p until j is complete or p is done
// for (dropped, switched away from, or failed).
func (a *assembler) work(ctx context.Context, j *job, p *feed, errc chan<- error) {
	fail := func(err error) {
		select {
		case errc <- err:
		default:
		}
	}
	var have []bool
	var haveAt time.Time
	gate := rescueGate{judged: p.judged.Load(), clock: &p.probes} // a source's first window is short once
	// whole: p holds the whole file (the origin, or a source that
	// finished), so its prefix does not grow and a rescue gate judges it
	// by probes (see rescueGate.judge); silent counts the probes in a row
	// that brought nothing.
	whole := !p.cl.Partial
	silent := 0
	var fetched, probes int64
	opened := 0
	defer func() {
		a.m.cfg.Log.WithFields(logrus.Fields{"source": p.cl.Source, "slot": p.cl.Slot, "path": j.e.Path,
			"bytes": fetched, "probes": probes, "gate_opened": opened}).Debug("done with a source for a file")
	}()
	mine := map[int]bool{} // chunks asked of p already (see skipMine)
	for ctx.Err() == nil && !j.complete() {
		if !a.sw.holds(p) {
			return
		}
		// The leading source (the pull's own, unless another is much
		// faster: see swarm.lead) is asked for the next chunks in file
		// order whether it has them yet or not: a partial source streams a
		// range as its chunks land (peer.Incoming), so each relay in a
		// chain adds one chunk's time, not a have-poll's. The other
		// sources are asked only for chunks they have, so no request
		// waits on a source that may never get them.
		lead := a.sw.lead() == p
		poll := 250 * time.Millisecond
		if p.rescue && !gate.open {
			poll = gate.poll(whole) // what the gate judges by (see rescueGate.update and judge)
		}
		if p.cl.Partial && !whole && !lead && time.Since(haveAt) > poll {
			all, h, err := a.m.client.Have(ctx, p.cl.SourceAddr, a.sw.src.gen, j.e.Path, len(j.chunks))
			if err != nil {
				a.lose(ctx, p, err, fail)
				return
			}
			have, haveAt = h, time.Now()
			if all { // it finished: no more have-polls
				have, whole = nil, true
				gate.keep(time.Now())
			}
			if p.rescue && !whole {
				was := gate.open
				gate.update(prefixBytes(j.chunks, all, h), a.parentBytes(j), time.Now())
				if gate.judged {
					p.judged.Store(true)
				}
				if gate.open && !was {
					opened++
					p.gated.Store(true)
					a.m.cfg.Log.WithFields(logrus.Fields{"source": p.cl.Source, "path": j.e.Path}).Debug("rescue gate opened: the grandparent's prefix grows several times as fast as the parent's")
				}
			}
		}
		if p.rescue && whole && !lead {
			gate.judge(a.parentBytes(j), j.inflow(), time.Now())
		}
		probe := false
		if p.rescue && !lead && !gate.open {
			if whole {
				probe = gate.probe(time.Now())
			}
			if !probe {
				select { // the pull's own source is not slow: nothing to take
				case <-ctx.Done():
				case <-time.After(poll):
				}
				continue
			}
		}
		// The leader takes runs in file order: of maxRun when the pull
		// may hold other sources (--sources above 1), so they find chunks
		// nobody was asked for in every file, or else of runBytes; the
		// others take runs sized to their rate, a probe one of
		// probeBytes. A file of runBytes or less that the leader was asked
		// for in one run leaves an extra source nothing but to double it
		// (see job.take): on the netbed's slow host (B/8) pulling a tree
		// of eight 4 MiB files, the two met mid-file in every file. With
		// runs of maxRun only once an extra source was held, the files
		// the pull began with were still asked for whole (the slow host
		// at 1.10-1.13 x its floor, median 1.125, 6 runs); from the start,
		// 1.09-1.12 (median 1.11, 6 runs), single-file rows unchanged.
		// Runs of a quarter second of the leader's rate, between maxRun
		// and runBytes, gave the host behind a slow first host 1.34-1.37
		// x S/B (2 runs) against 1.20-1.26. A leader has one request in
		// flight a file, so a run costs a round trip: at 30 ms, runs of
		// maxRun hold a file to about 28 MB/s (runBytes to 66 MB/s).
		marks, limit := have, p.runLimit()
		switch {
		case lead && a.sw.want > 1:
			marks, limit = nil, maxRun
		case lead:
			marks, limit = nil, runBytes
		case probe:
			limit = gate.probeSize()
		}
		// A probe takes its run from the back of the file: cut off at
		// probeTime, it leaves its chunks for later, and taken from just
		// ahead of the stream it would stall every host behind this one.
		eg := endgameBack
		switch {
		case p.rescue:
			eg = endgameFront
		case a.othersFresh(j):
			eg = endgameNone
		}
		i, k := j.take(marks, skipMine(mine, lead), limit, probe, eg)
		if i == k {
			if probe {
				gate.unprobe() // nothing to probe with: the source's other gates may probe
			}
			select { // nothing this source has: wait for a change
			case <-ctx.Done():
			case <-j.changed:
				j.signal() // pass it on to the other workers
			case <-time.After(200 * time.Millisecond):
				haveAt = time.Time{}
			}
			continue
		}
		for x := i; x < k; x++ {
			mine[x] = true
		}
		// A probe is measured by the gate alone: the source's rate, which
		// decides the lead (swarm.lead), counts it only if it opens the
		// gate (with the probe it confirmed, see assembler.probed).
		counted := p
		if probe {
			counted = nil
		}
		if !a.sw.holds(p) { // the claim ended while this run was chosen (see swarm.abandon)
			if probe {
				gate.unprobe()
			}
			j.untake(i, k)
			return
		}
		w := a.newChunkWriter(j, i, j.chunks[i:k], counted)
		rctx, rcancel := context.WithCancel(ctx)
		if probe {
			rcancel()
			rctx, rcancel = context.WithTimeout(ctx, probeTime+probeGrace)
			w.cutAt, w.cut = time.Now().Add(probeTime), rcancel
		} else {
			w.stop = rcancel
		}
		req := 0
		if counted != nil {
			req = p.begin(rcancel)
		}
		began := time.Now()
		got, err := a.m.client.FetchChunks(rctx, p.cl.SourceAddr, a.sw.src.gen, j.e.Path, j.chunks[i].Off, chunkLens(j.chunks[i:k]), a.fetchOptions(ctx), w)
		w.close() // the last chunks land (and count) while the request does
		fetched += w.bytes
		if probe {
			probes++
		}
		if counted != nil {
			p.end(req)
		}
		if probe && !a.probed(ctx, p, &gate, w.bytes, time.Since(began), &silent) {
			rcancel()
			j.untake(i, k)
			return
		}
		demoted := rctx.Err() != nil && ctx.Err() == nil
		rcancel()
		a.wire.Add(got.Wire)
		a.sw.src.count(p.cl, w.bytes)
		j.untake(i, k)
		var mismatch *apply.HashMismatchError
		switch {
		case demoted && !errors.As(w.err, &mismatch):
			// Another source leads now (see swarm.lead): the chunks
			// this request did not bring are for the others to take.
		case errors.As(w.err, &mismatch):
			if p.cl.Index == 0 {
				fail(w.err) // the pull fails; its own source is barred
				return
			}
			a.sw.drop(ctx, p, coord.SourceBad, w.err.Error())
			return
		case w.err != nil:
			fail(w.err) // our own write failed
			return
		case err != nil && ctx.Err() == nil:
			if !whole && a.behind(ctx, p, j, i, k, err, time.Since(began)) {
				continue // asked again: the source waits for its own
			}
			a.lose(ctx, p, err, fail)
			return
		}
	}
}

// behind reports whether p, a partial source whose request for the chunks
// [i, k) of j waited d and failed with err without bringing them all, is
// behind rather than stalled: the request waited (a second or more, not an
// error at once), p answers a have-poll, and it lacks the first of those
// chunks that has not landed. p then waits for its own source, as a host
// deep in a long chain waits for the chain's front: at 3,000 simulated
// hosts on 36 Mbit/s links the front took longer than the stall timeout
// to reach the deepest hosts, and every one of them judged its living
// source dead (3,893 failed pulls in one task). The request is made again,
// at no cost to Redis, and the file's no-progress clock starts again (a
// chain 10,000 deep on such links keeps its tail waiting about 5 minutes,
// noProgressAfter). A source that does not answer, that has the chunk and
// did not send it, or whose own pull ended (it holds the file whole, or
// serves nothing) is lost as before.
func (a *assembler) behind(ctx context.Context, p *feed, j *job, i, k int, err error, d time.Duration) bool {
	if !p.cl.Partial || !errors.Is(err, peer.ErrUnavailable) || d < behindWait {
		return false
	}
	first := -1
	for x := i; x < k; x++ {
		if !j.isDone(x) {
			first = x
			break
		}
	}
	if first < 0 {
		return true // all landed after all: nothing to ask again
	}
	all, have, herr := a.m.client.Have(ctx, p.cl.SourceAddr, a.sw.src.gen, j.e.Path, len(j.chunks))
	if herr != nil || all || have[first] {
		return false
	}
	a.m.cfg.Log.WithFields(logrus.Fields{"source": p.cl.Source, "path": j.e.Path, "chunk": first, "waited": d.Round(time.Millisecond)}).
		Debug("the source has not received the chunk yet: asking again")
	a.m.cfg.Metrics.SourcesBehind.Inc()
	j.coming()
	return true
}

// behindWait is how long a failed request to a partial source must have
// waited for the source to be judged behind rather than stalled (see
// assembler.behind): a request that fails sooner did not wait for the
// source's stream, it met an error.
const behindWait = time.Second

// skipMine returns the chunks a source's worker must not take: those it
// asked the source for already (mine), unless the source leads the pull.
// A source that is not leading takes back nothing it was asked for and did
// not bring (a demoted leader's chunks are the new leader's to take) and
// never doubles its own request in the endgame. The leader takes any
// chunk still missing: otherwise a chunk each source had once been asked
// for, as the lead moved between them, was asked of none again, and the
// pull waited for it for good (three sources of a pull that lost its lease
// under load did that).
func skipMine(mine map[int]bool, lead bool) map[int]bool {
	if lead {
		return nil
	}
	return mine
}

// probed takes the outcome of a probe of rescue source p (n bytes in d, see
// rescueGate.probed), counting it in p's rate if it opened the gate. It
// reports false when p was given back: a rescue source that answered
// maxSilentProbes probes in a row with nothing (unreachable, stalled)
// would otherwise hold the slot, the only one of its kind its source has,
// for the whole pull.
func (a *assembler) probed(ctx context.Context, p *feed, gate *rescueGate, n int64, d time.Duration, silent *int) bool {
	if ctx.Err() != nil {
		// The file is complete (or the pull ends): the probe was cut
		// short, and says nothing of the source that the schedule the
		// source's other gates share should keep.
		gate.unprobe()
		return true
	}
	growth := gate.growth
	open := gate.probed(n, d, time.Now())
	if open {
		// Both probes, the one confirmed and this one: together they
		// are what opened the gate.
		p.credit(n+gate.firstN, d+gate.firstD)
		p.proven.Store(true)
	}
	a.m.cfg.Log.WithFields(logrus.Fields{"source": p.cl.Source, "bytes": n, "took": d.Round(time.Millisecond),
		"parent_rate": int64(growth), "open": open}).Debug("probed a rescue source")
	*silent++
	if n > 0 || ctx.Err() != nil {
		*silent = 0
	}
	if *silent < maxSilentProbes {
		return true
	}
	a.sw.drop(ctx, p, coord.SourceOK, fmt.Sprintf("rescue source %s sent nothing to %d probes", p.cl.Source, *silent))
	return false
}

// rescueGate decides whether a rescue source (the pull's grandparent, see
// swarm.rescue) is asked for chunks: only while the prefix of the file it
// holds (the bytes from the start, without a gap) grows several times as
// fast as that of the pull's own source, a partial one. Then the link into
// that source is what is slow (its downlink, or the grandparent's uplink,
// which the rescue then finds out), and the grandparent's uplink has room.
// Otherwise the parent is as fast as the data reaches the grandparent, and
// a rescue stream would only take the grandparent's uplink from the parent
// and the chain behind it. Prefixes, not counts: chunks a host fetched
// out of order (from its own rescue source) say nothing of how fast the
// chain below it is fed.
type rescueGate struct {
	open       bool
	known      bool
	judged     bool      // a window was judged since the gate started (see window)
	gp, parent int64     // prefixes at the start of the window
	at         time.Time // when the window began

	// A whole source's (see judge): the parent's growth in the last
	// window, bytes/s (grown: measured since the last probe), until when
	// a probe opened the gate, and the source's probe schedule (clock,
	// see probeClock).
	growth float64
	grown  bool
	until  time.Time
	clock  *probeClock
	// confirm: the last probe was fast enough to open the gate, and the
	// next, due at once (from confirmAt) and of confirmBytes, decides
	// (see probed).
	confirm   bool
	confirmAt time.Time
	// measured: a whole source's window ended since the gate started, so
	// no later one is a first window (see judge), and the loop polls once
	// a window (see poll). Not judged, which sets the partial gate's
	// windows (see window).
	measured bool
	// pending: a window after the first found the parent slow; the next
	// opens the gate if it does too (see update).
	pending bool
	// firstN, firstD: what the probe that asked for confirmation brought,
	// and in how long (see probed).
	firstN int64
	firstD time.Duration
	// arrived: the file's bytes arrived when the gate started (see judge).
	arrived int64
}

// restart closes the gate and forgets what it measured and any
// confirmation due: the next window starts from nothing.
func (g *rescueGate) restart() {
	g.open, g.known, g.grown, g.confirm, g.pending = false, false, false, false, false
}

// judge is update for a rescue source that holds the whole file (the
// origin, behind the first host of a chain, or a grandparent that
// finished), whose prefix does not grow: it measures only how fast the
// parent's prefix grows (parent < 0: not known or not partial: closed),
// the first window by the bytes that arrived (see below), later ones over
// gateWindow or more, and ends an opening that probed expired. f is what the file's sources other than probes have brought
// (job.inflow). The rate of the source itself is measured on probes.
func (g *rescueGate) judge(parent int64, f flow, now time.Time) {
	if parent < 0 {
		g.restart()
		return
	}
	if g.open {
		// While open, this host's prefix grows with the rescue's chunks
		// too: no window is measured, and the next starts when the
		// opening ends.
		if now.After(g.until) {
			g.restart()
		}
		return
	}
	if !g.known {
		g.known, g.parent, g.at, g.arrived = true, parent, now, f.bytes
		return
	}
	// The first window ends firstGateWindow after the file's first bytes
	// arrived, measured in bytes arrived, landed or not, from then (not
	// from the gate's start, which may come before the parent's stream
	// does: a healthy parent would look slow); with no bytes at all,
	// gateWindow after the gate started, at nothing. Landed bytes alone
	// measured a healthy stream of a few MiB/s at nothing (its first chunk
	// takes longer to land), and waiting for them held back the hosts
	// behind a slow first host of a chain (B/8 on the netbed): the relay's
	// stream starts slowly, its acknowledgements queueing on its own full
	// downlink behind the origin's data, and its first whole chunk took
	// 300-430 ms to land after the manifest, 128 KiB more 150-300 ms after
	// it; its first bytes came up to 340 ms after the manifest. A parent
	// that sent nothing for 1.2 s was probed before too (below).
	if !g.measured {
		from, n, wait := f.began, f.bytes, firstGateWindow
		switch {
		case from.IsZero():
			from, n, wait = g.at, 0, gateWindow
		case g.at.After(from): // the gate started after the stream did
			from, n = g.at, f.bytes-g.arrived
		}
		if d := now.Sub(from); d >= wait {
			g.growth, g.grown, g.measured = float64(n)/d.Seconds(), true, true
			g.parent, g.at = parent, now
		}
		return
	}
	// A window ends after gateWindow once it saw probeBytes/2 land (the
	// prefix grows a chunk at a time: a short window of a slow stream
	// may see none), or after 4 gateWindows whatever it saw.
	dt, dp := now.Sub(g.at), parent-g.parent
	if dt < gateWindow || (dp < probeBytes/2 && dt < 4*gateWindow) {
		return
	}
	g.growth, g.grown, g.measured = float64(dp)/dt.Seconds(), true, true
	g.parent, g.at = parent, now
}

// probe reports whether a whole rescue source is to be probed now: while
// the gate is closed, once a window measured the parent's growth, while no
// other probe of the source runs (for another file: see probeClock), and
// no sooner than the pause after the last probe (probeEvery, doubling
// after each probe that left a gate closed, up to maxProbePause: a healthy
// chain pays for a few probes, not one a second). A confirmation (see
// probed) is due at once. A probe asks for probeBytes and is cut off after
// probeTime (see probed).
func (g *rescueGate) probe(now time.Time) bool {
	if g.open || !g.grown {
		return false
	}
	c := g.probeClock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if now.Before(c.running) {
		return false
	}
	if g.confirm && now.Sub(g.confirmAt) > probeEvery {
		g.confirm = false // not taken at once (the source led meanwhile): start over
	}
	if !g.confirm {
		if now.Before(c.next) {
			return false
		}
		c.next = now.Add(probeEvery) // until probed says how long to pause
	}
	c.running = now.Add(probeTime + probeGrace + probeSlack)
	return true
}

// probed takes a probe's outcome: n bytes in d. Its rate is compared with
// the parent's growth in the window before it, which did not share this
// host's downlink with the probe: when that downlink is what is slow, the
// probe can take no more than the parent brought; when the parent is slow
// (the first host of a chain, on a slow link), it brings gateFactor times
// as much, and the gate opens for probeEvery (probed reports whether it
// did). A probe that is fast enough is confirmed before the gate opens:
// the next probe is due at once and asks for confirmBytes, and only if it
// is fast enough too does the gate open. A link's burst (a token
// bucket's: tc's on the netbed, a cloud NIC's credits) can decide one
// probe: at 16 MiB/s on the netbed the burst is 2 MiB, and a 1 MiB probe
// of the origin came in 9 ms, opening the gate beside a parent at the
// full rate (docs/PERFORMANCE.md, tenth session); the two together ask
// for more than such a burst. A probe is cut off at probeTime when the
// source, or this host's link, is slow. The next window starts after the
// probe that decides.
func (g *rescueGate) probed(n int64, d time.Duration, now time.Time) bool {
	c := g.probeClock()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.running = time.Time{}
	fast := d > 0 && n >= minRun && float64(n)/d.Seconds() >= gateFactor*g.growth
	if fast && !g.confirm {
		g.confirm, g.confirmAt, c.next = true, now, now
		g.firstN, g.firstD = n, d
		return false
	}
	g.known, g.grown, g.confirm = false, false, false
	if fast {
		g.open, g.until, c.pause = true, now.Add(probeEvery), 0
		c.next = g.until
		return true
	}
	c.pause = min(max(2*c.pause, probeEvery), maxProbePause)
	c.next = now.Add(c.pause)
	return false
}

// unprobe ends the probe that probe allowed without an outcome (it was
// not sent, or cut short as the file completed): the source's other
// gates may probe again.
func (g *rescueGate) unprobe() {
	c := g.probeClock()
	c.mu.Lock()
	c.running = time.Time{}
	c.mu.Unlock()
}

// probeClock returns the schedule g's probes keep: the source's (see
// feed.probes), or g's own when it has none.
func (g *rescueGate) probeClock() *probeClock {
	if g.clock == nil {
		g.clock = &probeClock{}
	}
	return g.clock
}

// probeClock is when a whole rescue source may be probed next. The gates
// of every file pulled from the source at once share it (see
// feed.probes): a tree pull fetches several files at once, and each
// file's gate, starting over, probed the source on its own, the pause
// after a probe that left the gate closed never growing. Behind a slow
// host's own link (B/8 on the netbed, 8 files of 4 MiB) four probes at a
// time each took a good part of that link for 600 ms and brought a few
// KiB, and the slow host took 1.44-1.49 x its floor, against 1.07-1.10
// for one file.
type probeClock struct {
	mu      sync.Mutex
	next    time.Time     // no probe (but a confirmation) before
	pause   time.Duration // after the last probe that left a gate closed
	running time.Time     // a probe runs until probed, or at the latest until then
}

// probeSize is how much the due probe asks for: probeBytes, or
// confirmBytes for a probe that confirms another (see probed).
func (g *rescueGate) probeSize() int64 {
	if g.confirm {
		return confirmBytes
	}
	return probeBytes
}

// keep carries an opening of the prefix gate (see update) over to the
// probes, when the rescue source turns out to hold the whole file (it
// finished): the gate stays open for probeEvery.
func (g *rescueGate) keep(now time.Time) {
	if g.open {
		c := g.probeClock()
		c.mu.Lock()
		g.until, c.next = now.Add(probeEvery), now.Add(probeEvery)
		c.mu.Unlock()
	}
	g.known, g.confirm = false, false
}

// probeBytes, confirmBytes, probeTime, probeEvery, maxProbePause: see
// rescueGate.probe and probed. A probe of the origin from the host behind
// a healthy first host takes a sixteenth of a second of the origin's
// uplink at 16 MiB/s (three sixteenths when a burst made it look fast and
// a confirmation follows), at 0.3, 1.3, 3.3, 7.3, 15.3... seconds into
// the pull.
//
// A probe still running at probeTime ends at the end of the chunk it is
// receiving, or at probeTime+probeGrace: cut off mid-chunk, it threw away
// what it had of that chunk, and on a slow host's link every probe runs
// out its time. On the netbed (one host at B/8, four probes of about
// 150-400 KB each) the slow host fetched 0.6-1.7 MB more than the file
// (median 1.2) with probes cut mid-chunk, 0.14-1.08 MB (median 0.38)
// with probes ended at a chunk's end, 12 runs each.
const (
	probeBytes   = 1 << 20
	confirmBytes = 2 << 20
	probeTime    = 300 * time.Millisecond
	probeGrace   = 300 * time.Millisecond
	// probeSlack: a probe that never reported (its run was not taken)
	// stops holding the source's other gates this much after its cap.
	probeSlack    = 100 * time.Millisecond
	probeEvery    = time.Second
	maxProbePause = 8 * time.Second
	// maxSilentProbes probes in a row that bring nothing give the
	// rescue slot back.
	maxSilentProbes = 3
)

// update takes the grandparent's and the parent's prefixes at now (parent
// < 0: not known, or the parent is not partial: closed). It judges the
// growth over windows of gateWindow at least, from the sample that began
// the window: a parent that stalls for a moment (a pause, a busy core)
// does not open it; gateFactor times and gateMin bytes at least do, in
// the gate's first window or in two windows in a row after it.
//
// Two, because a parent that was slow only because its own source was
// lags for a window once that source speeds up (the grandparent bypassed
// a slow relay, see Bypass): its prefix follows the grandparent's a hop
// later. Opened then, the gate made this host pull from the grandparent
// beside the parent, on the one uplink that fed the parent, and each
// then took half of it to the end of the file; on the netbed, with one
// host at B/8 at the head of the chain, every host behind took 2.3 x S/B
// in one such run. The first window stays one: a slow parent is most
// costly found late, and at a chain's start nobody has had to catch up.
func (g *rescueGate) update(gp, parent int64, now time.Time) {
	if parent < 0 {
		g.restart()
		return
	}
	if !g.known {
		g.known, g.gp, g.parent, g.at = true, gp, parent, now
		return
	}
	if now.Sub(g.at) < g.window() {
		return
	}
	dgp, dpar := gp-g.gp, parent-g.parent
	switch fast := dgp >= gateMin && dgp >= gateFactor*dpar; {
	case !fast:
		g.open, g.pending = false, false
	case g.open || g.pending || !g.judged:
		g.open, g.pending = true, false
	default:
		g.pending = true
	}
	g.gp, g.parent, g.at, g.judged = gp, parent, now, true
}

// window is the shortest window update judges: firstGateWindow for the
// first of a rescue source (of its first file: the gates of its later
// files start judged, see feed.judged), gateWindow after. The first decides how soon a host behind a
// slow link in the chain takes its rescue source, which is most of what
// that link costs the hosts behind it (on the netbed, with one host at
// B/8 among 16, the other 15 took 1.38-1.50 x S/B in 6 of 7 runs with a
// 300 ms first window, 1.24-1.31 in 3 of 4 with 150 ms). Later windows
// stay longer, so a moment's stall of a healthy parent does not open the
// gate.
func (g *rescueGate) window() time.Duration {
	if g.judged {
		return gateWindow
	}
	return firstGateWindow
}

// poll is how long the worker of a rescue source whose gate is closed
// waits before it judges again: a window (see window), except for a whole
// source until its first window ended (see judge), which is judged every
// gateTick so that window ends when it is due, not up to a window late.
// Judging a whole source costs no request.
func (g *rescueGate) poll(whole bool) time.Duration {
	if whole && !g.measured {
		return gateTick
	}
	return g.window()
}

// gateWindow, firstGateWindow, gateFactor and gateMin: see
// rescueGate.update. A slow link of B/8 in a chain makes the factor 8.
// gateTick: see rescueGate.poll.
const (
	gateTick        = 20 * time.Millisecond
	gateWindow      = 300 * time.Millisecond
	firstGateWindow = 150 * time.Millisecond
	gateFactor      = 3
	gateMin         = 1 << 20
)

// prefixBytes is how many bytes from the start of a file with chunks a
// have-bitmap (all: every one) marks without a gap.
func prefixBytes(chunks []manifest.Chunk, all bool, have []bool) int64 {
	var n int64
	for i, c := range chunks {
		if !all && (i >= len(have) || !have[i]) {
			break
		}
		n += c.Len
	}
	return n
}

// parentBytes stands for the prefix of j's file the pull's own source
// holds, or is -1 when that source is not a partial one: the prefix this
// host has landed, which the source, asked for the file in order whether
// it has the chunks yet or not, streams as they reach it (a chunk or two
// behind its own). Asking the source would cost a request over the very
// link that may be slow.
func (a *assembler) parentBytes(j *job) int64 {
	cl := a.sw.src.claim()
	if cl == nil || !cl.Partial {
		return -1
	}
	return j.prefix()
}

// fetchOptions are how runs of chunks are asked for: compressed if this
// pull compresses, and with the download limit counting the bytes on the
// wire, not the chunks they decode to.
func (a *assembler) fetchOptions(ctx context.Context) peer.ChunkOptions {
	opt := peer.ChunkOptions{Compress: a.compress}
	if a.m.cfg.Download != nil {
		opt.Wire = a.m.cfg.Download.Writer(ctx, io.Discard)
	}
	return opt
}

func chunkLens(chunks []manifest.Chunk) []int64 {
	lens := make([]int64, len(chunks))
	for i, c := range chunks {
		lens[i] = c.Len
	}
	return lens
}

// lose handles a source that failed a request: the pull's own claim moves
// to another source (a new worker starts on it), an extra one is given back
// with the verdict err gives.
func (a *assembler) lose(ctx context.Context, p *feed, err error, fail func(error)) {
	v := verdict(ctx, err, false)
	if p.cl.Index > 0 {
		a.sw.drop(ctx, p, v, err.Error())
		return
	}
	if v != coord.SourceDead {
		fail(err)
		return
	}
	if serr := a.sw.src.switchFrom(ctx, p.cl, err); serr != nil {
		fail(fmt.Errorf("%w (no other source: %w)", err, serr))
	}
}

// copyChunk copies chunk c from where at says this host has its bytes into
// f, if they still hash to c.Hash (the local file may have changed since it
// was indexed).
func (a *assembler) copyChunk(at chunkAt, f *os.File, c manifest.Chunk, buf *[]byte) error {
	if at.path == f.Name() && at.off == c.Off && at.len == c.Len {
		return a.keepInPlace(f, c, buf)
	}
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
// and lands each at its offset in the file once its bytes hash to the
// chunk's hash. Without a sink an unverified byte never reaches the file;
// with one, a chunk's bytes are written as they arrive (job.stream) and
// the chunk lands only if they verify. A bad chunk stops the stream with
// *apply.HashMismatchError. A chunk that landed meanwhile from another
// source (the endgame) is checked and dropped.
//
// A run of several chunks is hashed (and, without streaming, written) off
// the socket path: Write copies each chunk's bytes into a buffer and hands
// the full chunk to a lander goroutine, so receiving the next chunk
// overlaps hashing the last one (on a loopback copy of a big file they
// would otherwise take turns on one core). close must be called once
// the stream ends: it waits for the lander and gives the run's outcome.
type chunkWriter struct {
	j        *job
	chunks   []manifest.Chunk
	first    int // index of chunks[0] in the file
	fetched  *atomic.Int64
	progress func(int64)
	feed     *feed      // the source, whose rate each verified chunk counts for
	pool     *sync.Pool // of *[]byte chunk buffers, shared by a pull's writers

	k       int    // chunk being received
	buf     []byte // its bytes so far
	offered int64  // of them, how many were last offered to stream
	bytes   int64  // received in all
	err     error  // the first error, Write's or (once seen) the lander's

	// A probe's (see probeTime): the first chunk that ends at cutAt or
	// later ends the request, through cut.
	cutAt time.Time
	cut   func()
	// stop ends the request once the rest of its run landed from another
	// source (nil: not asked to).
	stop func()

	// With more than one chunk in the run: full chunks go to the lander
	// through ready, and their buffers come back on free; done is closed
	// when the lander exits, and landErr holds its first error.
	ready   chan landing
	free    chan []byte
	done    chan struct{}
	bufs    int // buffers taken from the pool
	closed  bool
	landErr atomic.Pointer[error]
}

// landing is a received chunk waiting to be verified and written.
type landing struct {
	k   int
	buf []byte
}

// writerBuffers bounds the chunk buffers of one run: one being received,
// one being hashed and written, one waiting between them.
const writerBuffers = 3

// newChunkWriter returns the writer of chunks (chunks[0] being chunk first
// of j's file), starting its lander when there are several.
func (a *assembler) newChunkWriter(j *job, first int, chunks []manifest.Chunk, p *feed) *chunkWriter {
	w := &chunkWriter{j: j, chunks: chunks, first: first, fetched: &a.fetched, progress: a.m.progress, feed: p, pool: &a.bufs}
	if len(chunks) > 1 {
		w.ready = make(chan landing, writerBuffers-2)
		w.free = make(chan []byte, writerBuffers)
		w.done = make(chan struct{})
		go w.lander()
	}
	return w
}

func (w *chunkWriter) Write(p []byte) (int, error) {
	if w.err == nil {
		w.err = w.landed()
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.feed != nil && len(p) > 0 {
		w.j.arrive(len(p), w.bytes == 0)
	}
	n := 0
	for len(p) > 0 {
		if w.k == len(w.chunks) {
			w.err = fmt.Errorf("%s: more bytes than the chunks asked for", w.j.e.Path)
			return n, w.err
		}
		c := w.chunks[w.k]
		if w.buf == nil {
			w.buf = w.buffer(c.Len)
		}
		take := min(int64(len(p)), c.Len-int64(len(w.buf)))
		if w.j.streamer != nil {
			// A step at a time, however large the write: the hosts
			// streaming from this one wait for no more.
			take = min(take, w.offered+streamStep-int64(len(w.buf)))
		}
		w.buf = append(w.buf, p[:take]...)
		p = p[take:]
		n += int(take)
		w.bytes += take
		if got := int64(len(w.buf)); w.j.streamer != nil && (got-w.offered >= streamStep || got == c.Len) {
			w.offered = got
			if err := w.j.stream(w, w.first+w.k, w.buf); err != nil {
				w.err = err
				return n, err
			}
		}
		if int64(len(w.buf)) < c.Len {
			continue
		}
		w.offered = 0
		if w.ready == nil {
			if err := w.land(w.k, w.buf); err != nil {
				w.err = err
				return n, err
			}
			w.buf = w.buf[:0]
		} else {
			w.ready <- landing{k: w.k, buf: w.buf}
			w.buf = nil
			if err := w.landed(); err != nil {
				w.err = err
				return n, err
			}
		}
		w.k++
		if w.cut != nil && !time.Now().Before(w.cutAt) {
			w.cut() // a probe's time is up, at a chunk's end
			w.cut = nil
		}
		if w.stop != nil && w.k < len(w.chunks) && w.j.allDone(w.first+w.k, w.first+len(w.chunks)) {
			w.stop() // the rest of the run landed from another source (see job.take)
			w.stop = nil
		}
	}
	return n, nil
}

// allDone reports whether chunks [i, k) of j all landed (or repeat one
// that did).
func (j *job) allDone(i, k int) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	for x := i; x < k; x++ {
		if !j.done[j.first[x]] {
			return false
		}
	}
	return true
}

// buffer returns an empty buffer for a chunk of n bytes: one the lander
// gave back, or one from the pool while the run holds fewer than
// writerBuffers, or else the next one the lander gives back.
func (w *chunkWriter) buffer(n int64) []byte {
	var b []byte
	select {
	case b = <-w.free:
	default:
		if w.free == nil || w.bufs < writerBuffers {
			w.bufs++
			if bp, ok := w.pool.Get().(*[]byte); ok {
				b = *bp
			}
		} else {
			b = <-w.free
		}
	}
	if int64(cap(b)) < n {
		b = make([]byte, 0, n)
	}
	return b[:0]
}

// land verifies chunk k of the run, held in b, and lands it (job.put:
// written into the file unless this writer streamed it there already)
// unless it landed from another source meanwhile.
func (w *chunkWriter) land(k int, b []byte) error {
	c := w.chunks[k]
	i := w.first + k
	if got := chunk.Hash(b).String(); got != c.Hash {
		w.j.unstream(w, i, true)
		return &apply.HashMismatchError{Path: w.j.e.Path, Want: c.Hash, Got: got, WantSize: c.Len, GotSize: c.Len}
	}
	if w.feed != nil {
		w.feed.got(c.Len)
	}
	landed, err := w.j.put(w, i, b)
	if err != nil {
		return err
	}
	if landed {
		w.fetched.Add(c.Len)
		if w.progress != nil {
			w.progress(c.Len)
		}
	}
	return nil
}

// lander verifies and lands the chunks Write hands over, in order, until
// close; after an error it drops what they streamed (job.unstream) and
// gives the buffers back.
func (w *chunkWriter) lander() {
	defer close(w.done)
	for l := range w.ready {
		if w.landErr.Load() == nil {
			if err := w.land(l.k, l.buf); err != nil {
				w.landErr.Store(&err)
			}
		} else {
			// Streamed from a source that sent a bad chunk (or that
			// this host failed to write) and never verified: dropped.
			w.j.unstream(w, w.first+l.k, true)
		}
		w.free <- l.buf
	}
}

// landed returns the lander's first error, nil if none (or no lander).
func (w *chunkWriter) landed() error {
	if e := w.landErr.Load(); e != nil {
		return *e
	}
	return nil
}

// close waits until every chunk received is verified and written (or
// dropped after an error), gives the buffers back to the pool and returns
// the run's first error: a bad chunk (*apply.HashMismatchError), a write
// that failed, or more bytes than the chunks.
func (w *chunkWriter) close() error {
	if !w.closed {
		w.closed = true
		if w.ready != nil {
			close(w.ready)
			<-w.done
			close(w.free)
			for b := range w.free {
				w.put(b)
			}
		}
		if w.buf != nil {
			if len(w.buf) > 0 && w.k < len(w.chunks) {
				// The chunk cut off midway: its bytes stay for the next
				// writer, unless this source sent a bad chunk.
				w.j.unstream(w, w.first+w.k, w.err != nil || w.landed() != nil)
			}
			w.put(w.buf)
			w.buf = nil
		}
		if w.err == nil {
			w.err = w.landed()
		}
	}
	return w.err
}

func (w *chunkWriter) put(b []byte) {
	b = b[:0]
	w.pool.Put(&b)
}

var _ io.Writer = (*chunkWriter)(nil)

// A pull's observer is its peer.Incoming: it must hear of chunks as they
// arrive, or the hosts behind this one wait for whole chunks.
var _ apply.ChunkObserver = (*peer.Incoming)(nil)
