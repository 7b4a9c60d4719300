package minion

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/apply"
	"github.com/fanout/fanout/internal/chunk"
	"github.com/fanout/fanout/internal/manifest"
	"github.com/fanout/fanout/internal/metrics"
)

// writerJob returns a job of a file of the given chunk sizes (random
// bytes), open for writing in a temporary directory, and the file's
// content.
func writerJob(t *testing.T, lens ...int) (*job, []byte) {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, uint64(len(lens))))
	var data []byte
	var chunks []manifest.Chunk
	for _, l := range lens {
		b := make([]byte, l)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		chunks = append(chunks, manifest.Chunk{Off: int64(len(data)), Len: int64(l), Hash: chunk.Hash(b).String()})
		data = append(data, b...)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	n := len(chunks)
	j := &job{e: manifest.Entry{Path: "f"}, f: f, chunks: chunks, done: make([]bool, n), inflight: make([]int, n),
		first: make([]int, n), changed: make(chan struct{}, 1)}
	for i := range j.first {
		j.first[i] = i
	}
	return j, data
}

// write feeds data to w in pieces of the sizes given, cycling, and
// returns Write's first error.
func write(w *chunkWriter, data []byte, sizes ...int) error {
	for k := 0; len(data) > 0; k++ {
		n := min(sizes[k%len(sizes)], len(data))
		if _, err := w.Write(data[:n]); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

// A chunkWriter lands every chunk of a good stream, whatever the sizes of
// the writes that bring it, and only the chunks it was asked for.
func TestChunkWriterLands(t *testing.T) {
	for _, lens := range [][]int{{1000}, {700, 1, 5000, 64 << 10, 3}, {300 << 10, 200 << 10, 100 << 10, 50 << 10, 10}} {
		j, data := writerJob(t, lens...)
		a := &assembler{m: &Minion{cfg: Config{Metrics: metrics.New()}}}
		w := a.newChunkWriter(j, 0, j.chunks, nil)
		if err := write(w, data, 1, 4093, 65536, 7); err != nil {
			t.Fatalf("chunks %v: write: %v", lens, err)
		}
		if err := w.close(); err != nil {
			t.Fatalf("chunks %v: close: %v", lens, err)
		}
		if !j.complete() {
			t.Fatalf("chunks %v: not every chunk landed: %v", lens, j.done)
		}
		got, err := os.ReadFile(j.f.Name())
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("chunks %v: the file differs from the stream", lens)
		}
		if a.fetched.Load() != int64(len(data)) || w.bytes != int64(len(data)) {
			t.Fatalf("chunks %v: fetched %d, received %d, want %d", lens, a.fetched.Load(), w.bytes, len(data))
		}
	}
}

// A probe's writer whose time is up ends the request at the end of the
// chunk it is receiving, not in the middle: cut is called once, as the
// chunk under way when the time ran out completes, and that chunk lands.
func TestChunkWriterCutsAtChunkEnd(t *testing.T) {
	j, data := writerJob(t, 100<<10, 100<<10, 100<<10)
	a := &assembler{m: &Minion{cfg: Config{Metrics: metrics.New()}}}
	w := a.newChunkWriter(j, 0, j.chunks, nil)
	cuts := 0
	w.cutAt, w.cut = time.Now().Add(time.Hour), func() { cuts++ }
	if err := write(w, data[:150<<10], 10<<10); err != nil { // chunk 0 and half of 1
		t.Fatal(err)
	}
	if cuts != 0 {
		t.Fatal("cut before the probe's time was up")
	}
	w.cutAt = time.Now() // the time is up in the middle of chunk 1
	if err := write(w, data[150<<10:190<<10], 10<<10); err != nil {
		t.Fatal(err)
	}
	if cuts != 0 {
		t.Fatal("cut in the middle of a chunk")
	}
	if err := write(w, data[190<<10:], 10<<10); err != nil { // chunk 1 ends, chunk 2 follows
		t.Fatal(err)
	}
	if cuts != 1 {
		t.Fatalf("cut %d times, want once, as chunk 1 ended", cuts)
	}
	if err := w.close(); err != nil {
		t.Fatal(err)
	}
	if !j.done[0] || !j.done[1] {
		t.Fatalf("landed %v: the chunk under way when the time ran out did not land", j.done)
	}
}

// A run whose remaining chunks all landed from another source (one that
// doubled it from the back in the endgame) ends its request at the next
// chunk's end; one with a chunk still missing goes on.
func TestChunkWriterStopsWhenRestLanded(t *testing.T) {
	j, data := writerJob(t, 100<<10, 100<<10, 100<<10, 100<<10)
	a := &assembler{m: &Minion{cfg: Config{Metrics: metrics.New()}}}
	w := a.newChunkWriter(j, 0, j.chunks, &feed{})
	stops := 0
	w.stop = func() { stops++ }
	j.done[3] = true // the other source's run: chunk 3 landed, chunk 2 not yet
	if err := write(w, data[:100<<10], 10<<10); err != nil {
		t.Fatal(err)
	}
	if stops != 0 {
		t.Fatal("stopped with chunks 1 and 2 still missing")
	}
	j.mu.Lock()
	j.done[2] = true
	j.mu.Unlock()
	if err := write(w, data[100<<10:200<<10], 10<<10); err != nil {
		t.Fatal(err)
	}
	if stops != 1 {
		t.Fatalf("stopped %d times once the rest of the run had landed, want once", stops)
	}
	w.close()
}

// A file's inflow counts the bytes a source's requests bring as they
// arrive, and its start is the first of them; a probe's bytes (its writer
// counts for no feed) are not counted.
func TestChunkWriterCountsInflow(t *testing.T) {
	j, data := writerJob(t, 100<<10, 100<<10)
	a := &assembler{m: &Minion{cfg: Config{Metrics: metrics.New()}}}
	probe := a.newChunkWriter(j, 0, j.chunks[:1], nil)
	if err := write(probe, data[:10<<10], 10<<10); err != nil {
		t.Fatal(err)
	}
	if f := j.inflow(); !f.began.IsZero() || f.bytes != 0 {
		t.Fatalf("a probe's bytes counted: %+v", f)
	}
	before := time.Now()
	w := a.newChunkWriter(j, 1, j.chunks[1:], &feed{})
	if err := write(w, data[100<<10:110<<10], 10<<10); err != nil {
		t.Fatal(err)
	}
	f := j.inflow()
	if f.began.Before(before) || f.began.After(time.Now()) || f.bytes != 10<<10 {
		t.Fatalf("after the source's first 10 KiB: %+v, want 10 KiB since after %v", f, before)
	}
	if err := write(w, data[110<<10:], 10<<10); err != nil { // not yet verified: still counted
		t.Fatal(err)
	}
	if err := w.close(); err != nil {
		t.Fatal(err)
	}
	if g := j.inflow(); !g.began.Equal(f.began) || g.bytes != 100<<10 {
		t.Fatalf("after the whole chunk: %+v, want 100 KiB since %v", g, f.began)
	}
}

// A bad chunk stops the run with a HashMismatchError: the chunks before
// it land, neither it nor any after it reaches the file, and a stream
// longer than its chunks is refused.
func TestChunkWriterBadChunk(t *testing.T) {
	lens := []int{100 << 10, 100 << 10, 100 << 10, 100 << 10, 100 << 10, 100 << 10}
	j, data := writerJob(t, lens...)
	bad := bytes.Clone(data)
	bad[2*100<<10+5] ^= 1 // chunk 2
	a := &assembler{m: &Minion{cfg: Config{Metrics: metrics.New()}}}
	w := a.newChunkWriter(j, 0, j.chunks, nil)
	werr := write(w, bad, 32<<10)
	err := w.close()
	var mismatch *apply.HashMismatchError
	if !errors.As(err, &mismatch) {
		t.Fatalf("close: %v, want a hash mismatch", err)
	}
	if werr != nil && !errors.As(werr, &mismatch) {
		t.Fatalf("write: %v, want nil or the mismatch", werr)
	}
	for i, d := range j.done {
		if d != (i < 2) {
			t.Fatalf("landed %v: want chunks 0 and 1 only", j.done)
		}
	}
	got, _ := os.ReadFile(j.f.Name())
	if len(got) != 2*100<<10 || !bytes.Equal(got, data[:len(got)]) {
		t.Fatalf("the file holds %d bytes, want the first two chunks only", len(got))
	}

	j, data = writerJob(t, 1000, 2000)
	w = a.newChunkWriter(j, 0, j.chunks, nil)
	if err := write(w, append(bytes.Clone(data), 'x'), 4096); err == nil {
		t.Fatal("a stream longer than its chunks was taken")
	}
	if err := w.close(); err == nil {
		t.Fatal("close after too many bytes: nil error")
	}
}

// A file of a chunked pull that no chunk reaches (here: no source at all)
// fails with errNoProgress once none landed for noProgress, naming what
// is missing, rather than waiting for good; one whose chunks keep landing,
// or whose source keeps confirming they are coming, does not, however
// long it takes in all.
func TestFetchAllGivesUpWithoutProgress(t *testing.T) {
	newJob := func(n int) *job {
		chunks := make([]manifest.Chunk, n)
		first := make([]int, n)
		for i := range chunks {
			chunks[i] = manifest.Chunk{Off: int64(i) << 10, Len: 1 << 10}
			first[i] = i
		}
		return &job{e: manifest.Entry{Path: "f", Size: int64(n) << 10}, chunks: chunks, first: first,
			done: make([]bool, n), inflight: make([]int, n), changed: make(chan struct{}, 1)}
	}
	m := testMinion(t, t.TempDir())
	src := &source{m: m} // no claim: nothing to fetch from
	sw := newSwarm(m, src, 1)
	src.sw = sw
	a := newAssembler(m, sw, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	a.noProgress = 300 * time.Millisecond
	j := newJob(3)
	j.land(1)
	err := a.fetchAll(ctx, j)
	if !errors.Is(err, errNoProgress) || !strings.Contains(err.Error(), "2 chunks missing from byte 0") {
		t.Fatalf("fetchAll with no source: %v, want errNoProgress naming 2 chunks missing from byte 0", err)
	}

	a.noProgress = 2 * time.Second
	j = newJob(30)
	go func() {
		for i := range 30 {
			time.Sleep(100 * time.Millisecond)
			j.land(i)
		}
	}()
	if err := a.fetchAll(ctx, j); err != nil {
		t.Fatalf("fetchAll whose chunks land every 100 ms for 3 s: %v", err)
	}

	// A source that confirms the chunks are still coming to it (a relay
	// deep in a chain: assembler.behind) holds the clock too: the chunks
	// land after 1.5 s, three times noProgress.
	a.noProgress = 500 * time.Millisecond
	j = newJob(2)
	go func() {
		for range 15 {
			time.Sleep(100 * time.Millisecond)
			j.coming()
		}
		j.land(0)
		j.land(1)
	}()
	if err := a.fetchAll(ctx, j); err != nil {
		t.Fatalf("fetchAll whose source says the chunks are coming: %v", err)
	}
}

// sinkLog records what a job tells its sink, in order: "a0:32768" for
// Arriving(0, 32768), "l1" for Landed(1).
type sinkLog struct {
	mu  sync.Mutex
	got []string
}

func (s *sinkLog) Arriving(i int, n int64) { s.add(fmt.Sprintf("a%d:%d", i, n)) }
func (s *sinkLog) Landed(i int)            { s.add(fmt.Sprintf("l%d", i)) }

func (s *sinkLog) add(e string) {
	s.mu.Lock()
	s.got = append(s.got, e)
	s.mu.Unlock()
}

// take returns what was recorded since the last take.
func (s *sinkLog) take() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.got
	s.got = nil
	return out
}

// streaming turns streaming on for j, as Assemble does with a sink.
func streaming(j *job) *sinkLog {
	s := &sinkLog{}
	j.sink = s
	j.exposed, j.streamer = make([]int64, len(j.chunks)), make([]*chunkWriter, len(j.chunks))
	return s
}

// With a sink, a writer streams a chunk's bytes into the file as they come,
// a step at a time, before it verifies them; what a writer cut off midway
// streamed stays for the next writer only if its bytes are the same; bad
// bytes are dropped (Arriving 0) before the chunk lands, so a reader that
// sent them fails; and a chunk lands with the bytes announced.
func TestChunkWriterStreams(t *testing.T) {
	const c = 100 << 10
	j, data := writerJob(t, c, c)
	log := streaming(j)
	a := &assembler{m: &Minion{cfg: Config{Metrics: metrics.New()}}}

	// A request cut off 70 KiB into chunk 0: two steps streamed, kept.
	w := a.newChunkWriter(j, 0, j.chunks, nil)
	if err := write(w, data[:70<<10], 8<<10); err != nil {
		t.Fatal(err)
	}
	if err := w.close(); err != nil {
		t.Fatal(err)
	}
	if got, want := log.take(), []string{"a0:32768", "a0:65536"}; !slices.Equal(got, want) {
		t.Fatalf("cut off: told %v, want %v", got, want)
	}
	got, _ := os.ReadFile(j.f.Name())
	if len(got) != 64<<10 || !bytes.Equal(got, data[:64<<10]) {
		t.Fatalf("cut off: the file holds %d bytes, want the 64 KiB streamed", len(got))
	}

	// A source with a bad byte inside those 64 KiB: it takes the chunk up,
	// finds its bytes differ and drops them first; its chunk fails and is
	// dropped again.
	bad := bytes.Clone(data)
	bad[10<<10] ^= 1
	w = a.newChunkWriter(j, 0, j.chunks, nil)
	werr := write(w, bad, 16<<10)
	err := w.close()
	var mismatch *apply.HashMismatchError
	if !errors.As(err, &mismatch) || (werr != nil && !errors.As(werr, &mismatch)) {
		t.Fatalf("bad source: close %v, write %v; want a hash mismatch", err, werr)
	}
	var of0 []string // chunk 1 may stream too before chunk 0 is checked
	for _, e := range log.take() {
		if strings.HasPrefix(e, "a0:") || strings.HasPrefix(e, "l0") {
			of0 = append(of0, e)
		}
	}
	if want := []string{"a0:0", "a0:65536", "a0:98304", "a0:102400", "a0:0"}; !slices.Equal(of0, want) {
		t.Fatalf("bad source: told %v of chunk 0, want %v", of0, want)
	}
	if j.isDone(0) {
		t.Fatal("the bad chunk landed")
	}

	// A good source streams and lands both chunks, a step at a time
	// even when its stream comes in one write.
	w = a.newChunkWriter(j, 0, j.chunks, nil)
	if err := write(w, data, len(data)); err != nil {
		t.Fatal(err)
	}
	if err := w.close(); err != nil {
		t.Fatal(err)
	}
	for _, e := range log.take() {
		var i int
		var n int64
		if _, err := fmt.Sscanf(e, "a%d:%d", &i, &n); err == nil && (n == 0 || (n%streamStep != 0 && n != c)) {
			t.Fatalf("a good source told %s: want steps of %d bytes up to the chunk's %d, no drop", e, streamStep, c)
		}
	}
	if !j.complete() {
		t.Fatalf("not every chunk landed: %v", j.done)
	}
	if got, _ := os.ReadFile(j.f.Name()); !bytes.Equal(got, data) {
		t.Fatal("the file differs from the good stream")
	}
}

// A chunk landed by a writer that does not stream it (the endgame's second
// source) keeps the bytes the streaming writer announced when they are the
// chunk's, and drops them first when they are not.
func TestChunkWriterLandsBesideStream(t *testing.T) {
	const c = 100 << 10
	for _, good := range []bool{true, false} {
		j, data := writerJob(t, c)
		log := streaming(j)
		a := &assembler{m: &Minion{cfg: Config{Metrics: metrics.New()}}}
		streamed := bytes.Clone(data)
		if !good {
			streamed[5] ^= 1
		}
		first := a.newChunkWriter(j, 0, j.chunks, nil)
		if err := write(first, streamed[:40<<10], 8<<10); err != nil {
			t.Fatal(err)
		}
		second := a.newChunkWriter(j, 0, j.chunks, nil)
		if err := write(second, data, 64<<10); err != nil {
			t.Fatal(err)
		}
		if err := second.close(); err != nil {
			t.Fatal(err)
		}
		// The first goes on: the chunk landed, its bytes go nowhere.
		werr := write(first, streamed[40<<10:], 8<<10)
		err := first.close()
		if good && (err != nil || werr != nil) {
			t.Fatalf("the streaming writer of good bytes: write %v, close %v", werr, err)
		}
		want := []string{"a0:32768", "l0"}
		if !good {
			want = []string{"a0:32768", "a0:0", "l0"}
		}
		if got := log.take(); !slices.Equal(got, want) {
			t.Fatalf("good %v: told %v, want %v", good, got, want)
		}
		if got, _ := os.ReadFile(j.f.Name()); !bytes.Equal(got, data) {
			t.Fatalf("good %v: the file differs from the verified chunk", good)
		}
	}
}
