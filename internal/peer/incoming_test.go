package peer

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/manifest"
)

// growing is a file being received the way apply writes one: a temporary
// file that grows in chunks and is then renamed into place.
type growing struct {
	t       *testing.T
	in      *Incoming
	e       manifest.Entry
	content []byte
	tmp     *os.File
	final   string
	written int
}

func newGrowing(t *testing.T, in *Incoming, root, p string, content []byte) *growing {
	t.Helper()
	final := filepath.Join(root, filepath.FromSlash(p))
	return &growing{t: t, in: in, e: manifest.Entry{Path: p, Type: manifest.File, Size: int64(len(content))}, content: content, final: final}
}

func (g *growing) begin() {
	g.t.Helper()
	f, err := os.OpenFile(filepath.Join(filepath.Dir(g.final), ".fanout-tmp-x"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		g.t.Fatal(err)
	}
	g.tmp = f
	g.in.Begin(g.e, f)
}

func (g *growing) write(n int) {
	g.t.Helper()
	n = min(n, len(g.content)-g.written)
	if _, err := g.tmp.Write(g.content[g.written : g.written+n]); err != nil {
		g.t.Fatal(err)
	}
	g.written += n
	g.in.Wrote(g.e, int64(g.written))
}

func (g *growing) land() {
	g.t.Helper()
	g.tmp.Close()
	if err := os.Rename(g.tmp.Name(), g.final); err != nil {
		g.t.Fatal(err)
	}
	g.in.End(g.e, nil)
}

func (g *growing) onDisk() (*os.File, error) { return os.Open(g.final) }

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rng := rand.New(rand.NewPCG(7, 8))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// readAll reads r in a goroutine and returns a channel with the result.
func readAll(r io.Reader) <-chan readResult {
	ch := make(chan readResult, 1)
	go func() {
		b, err := io.ReadAll(r)
		ch <- readResult{b, err}
	}()
	return ch
}

type readResult struct {
	b   []byte
	err error
}

func TestIncomingStreamsAsBytesLand(t *testing.T) {
	root := t.TempDir()
	content := randomBytes(300 << 10)
	e := manifest.Entry{Path: "f", Type: manifest.File, Size: int64(len(content))}
	in := NewIncoming([]manifest.Entry{e}, 5*time.Second)
	if !in.Pending("f") || in.Pending("other") {
		t.Fatal("Pending is wrong before the file begins")
	}
	g := newGrowing(t, in, root, "f", content)

	// The reader starts before the writer: it waits for the file to begin.
	r, err := in.Open(context.Background(), "f", e.Size, 0, g.onDisk)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got := readAll(r)
	g.begin()
	for g.written < len(content) {
		// The reader may end once the last byte is written (it asked
		// for e.Size bytes), so check before each write, never after
		// the last.
		select {
		case res := <-got:
			t.Fatalf("reader ended after %d of %d bytes: %v", len(res.b), len(content), res.err)
		default:
		}
		g.write(32 << 10)
	}
	g.land()
	res := <-got
	if res.err != nil || !bytes.Equal(res.b, content) {
		t.Fatalf("read %d bytes (%v), want the %d written", len(res.b), res.err, len(content))
	}
	if in.Pending("f") {
		t.Error("a landed file is still pending")
	}
}

func TestIncomingFromOffsetAndRange(t *testing.T) {
	root := t.TempDir()
	content := randomBytes(100 << 10)
	e := manifest.Entry{Path: "f", Type: manifest.File, Size: int64(len(content))}
	in := NewIncoming([]manifest.Entry{e}, 5*time.Second)
	g := newGrowing(t, in, root, "f", content)
	g.begin()
	g.write(10 << 10)
	r, err := in.Open(context.Background(), "f", 60<<10, 5<<10, g.onDisk)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got := readAll(r)
	g.write(len(content))
	res := <-got
	if res.err != nil || !bytes.Equal(res.b, content[5<<10:60<<10]) {
		t.Fatalf("read %d bytes (%v), want bytes 5 KiB to 60 KiB", len(res.b), res.err)
	}
}

// A reader that starts after the file landed (but was told it was
// pending) reads it from its final path.
func TestIncomingLandedBeforeTheReader(t *testing.T) {
	root := t.TempDir()
	content := randomBytes(20 << 10)
	e := manifest.Entry{Path: "f", Type: manifest.File, Size: int64(len(content))}
	in := NewIncoming([]manifest.Entry{e}, time.Second)
	g := newGrowing(t, in, root, "f", content)
	r, err := in.Open(context.Background(), "f", e.Size, 0, g.onDisk)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	g.begin()
	g.write(len(content))
	g.land()
	b, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(b, content) {
		t.Fatalf("read %d bytes (%v)", len(b), err)
	}
}

func TestIncomingDiscardedFailsTheReader(t *testing.T) {
	root := t.TempDir()
	content := randomBytes(64 << 10)
	e := manifest.Entry{Path: "f", Type: manifest.File, Size: int64(len(content))}
	in := NewIncoming([]manifest.Entry{e}, 5*time.Second)
	g := newGrowing(t, in, root, "f", content)
	g.begin()
	g.write(16 << 10)
	r, _ := in.Open(context.Background(), "f", e.Size, 0, g.onDisk)
	defer r.Close()
	got := readAll(r)
	bad := errors.New("hash mismatch")
	in.End(e, bad)
	res := <-got
	if !errors.Is(res.err, bad) {
		t.Fatalf("reader of a discarded file: %d bytes, err %v; want %v", len(res.b), res.err, bad)
	}
	if len(res.b) > 16<<10 {
		t.Errorf("reader got %d bytes, more than were written", len(res.b))
	}
}

func TestIncomingAbortAndStall(t *testing.T) {
	root := t.TempDir()
	es := []manifest.Entry{
		{Path: "a", Type: manifest.File, Size: 10},
		{Path: "b", Type: manifest.File, Size: 10},
	}
	in := NewIncoming(es, 200*time.Millisecond)
	// Nothing arrives for "a": its reader gives up after the wait bound.
	ra, _ := in.Open(context.Background(), "a", 10, 0, nil)
	defer ra.Close()
	if _, err := io.ReadAll(ra); !errors.Is(err, ErrArrivalStalled) {
		t.Errorf("stalled arrival: %v, want ErrArrivalStalled", err)
	}
	// The pull is abandoned: readers of "b" fail at once.
	gb := newGrowing(t, in, root, "b", []byte("0123456789"))
	gb.begin()
	gb.write(4)
	rb, _ := in.Open(context.Background(), "b", 10, 0, gb.onDisk)
	defer rb.Close()
	got := readAll(rb)
	stop := errors.New("pull failed")
	in.Abort(stop)
	if res := <-got; !errors.Is(res.err, stop) {
		t.Errorf("after Abort: %q, %v; want %v", res.b, res.err, stop)
	}
	// A reader whose caller gives up ends with its context.
	ctx, cancel := context.WithCancel(context.Background())
	in2 := NewIncoming(es, time.Minute)
	rc, _ := in2.Open(ctx, "a", 10, 0, nil)
	defer rc.Close()
	got = readAll(rc)
	cancel()
	if res := <-got; !errors.Is(res.err, context.Canceled) {
		t.Errorf("cancelled reader: %v", res.err)
	}
}

// The peer server streams a pending file to a real client, from an offset
// asked with Range, while it is still being written.
func TestServeIncoming(t *testing.T) {
	tr := newTree(t, 3)
	content := randomBytes(256 << 10)
	e := manifest.Entry{Path: "sub/big.bin", Type: manifest.File, Mode: 0o644, Size: int64(len(content))}
	m := tr.snap.Manifest
	m.Entries = append(m.Entries, e)
	m.Sort()
	snap := snapshotOf(t, 3, tr.root, m)
	snap.Incoming = NewIncoming([]manifest.Entry{e}, 5*time.Second)
	env := startPeer(t, snap)
	g := newGrowing(t, snap.Incoming, tr.root, e.Path, content)
	g.begin()
	g.write(1000)

	for _, offset := range []int64{0, 777, 200 << 10} {
		done := make(chan readResult, 1)
		go func() {
			var buf bytes.Buffer
			_, err := env.client.Fetch(context.Background(), env.addr, 3, e.Path, offset, &buf)
			done <- readResult{buf.Bytes(), err}
		}()
		if offset == 0 {
			time.Sleep(50 * time.Millisecond) // the request waits on the writer
			g.write(len(content))
		}
		res := <-done
		if res.err != nil || !bytes.Equal(res.b, content[offset:]) {
			t.Fatalf("fetch from %d: %d bytes, %v", offset, len(res.b), res.err)
		}
	}
	// Files already in place are served from disk meanwhile.
	if b, err := fetch(t, env.client, env.addr, 3, "a.txt", 0); err != nil || string(b) != "hello, peers\n" {
		t.Errorf("a.txt: %q %v", b, err)
	}
	g.land()
	if b, err := fetch(t, env.client, env.addr, 3, e.Path, 0); err != nil || !bytes.Equal(b, content) {
		t.Errorf("after landing: %d bytes, %v", len(b), err)
	}
}

// A pending file whose writer gives up breaks the response: the client
// sees a short body (peer unavailable), never a complete-looking one.
func TestServeIncomingDiscarded(t *testing.T) {
	tr := newTree(t, 3)
	content := randomBytes(64 << 10)
	e := manifest.Entry{Path: "new.bin", Type: manifest.File, Mode: 0o644, Size: int64(len(content))}
	m := tr.snap.Manifest
	m.Entries = append(m.Entries, e)
	m.Sort()
	snap := snapshotOf(t, 3, tr.root, m)
	snap.Incoming = NewIncoming([]manifest.Entry{e}, 5*time.Second)
	env := startPeer(t, snap)
	g := newGrowing(t, snap.Incoming, tr.root, e.Path, content)
	g.begin()
	g.write(8 << 10)
	done := make(chan readResult, 1)
	go func() {
		var buf bytes.Buffer
		_, err := env.client.Fetch(context.Background(), env.addr, 3, e.Path, 0, &buf)
		done <- readResult{buf.Bytes(), err}
	}()
	time.Sleep(50 * time.Millisecond)
	snap.Incoming.End(e, errors.New("hash mismatch"))
	res := <-done
	if !errors.Is(res.err, ErrUnavailable) || len(res.b) >= len(content) {
		t.Fatalf("discarded file: %d bytes, %v; want a short body and ErrUnavailable", len(res.b), res.err)
	}
}

func TestParseRange(t *testing.T) {
	tests := []struct {
		h          string
		start, end int64
		partial    bool
		err        bool
	}{
		{"", 0, 100, false, false},
		{"bytes=0-", 0, 100, true, false},
		{"bytes=10-", 10, 100, true, false},
		{"bytes=10-19", 10, 20, true, false},
		{"bytes=90-500", 90, 100, true, false},
		{"bytes=-30", 70, 100, true, false},
		{"bytes=-300", 0, 100, true, false},
		{"bytes=100-", 0, 0, false, true},
		{"bytes=-0", 0, 0, false, true},
		{"bytes=99-99", 99, 100, true, false},
		{"bytes=0-9223372036854775807", 0, 100, true, false},
		{"bytes=-9223372036854775807", 0, 100, true, false},
		{"bytes= 10-19 ", 10, 20, true, false},
		{"bytes=0-1,5-6", 0, 0, false, true}, // several ranges: refused
		{"bytes=0-0,0-0,0-0", 0, 0, false, true},
		{"bytes=0-,", 0, 0, false, true},
		{"items=0-1", 0, 100, false, false},
		{"bytes=x-", 0, 100, false, false},
		{"bytes=5-2", 0, 100, false, false},
		{"bytes=-5-", 0, 100, false, false},
		{"bytes=+5-", 0, 100, false, false},
		{"bytes=5-+9", 0, 100, false, false},
		{"bytes=-+5", 0, 100, false, false},
		{"bytes=5", 0, 100, false, false},
		{"bytes=99999999999999999999-", 0, 100, false, false},
		{"Bytes=0-1", 0, 100, false, false},
	}
	for _, tt := range tests {
		start, end, partial, err := parseRange(tt.h, 100)
		if (err != nil) != tt.err || (err == nil && (start != tt.start || end != tt.end || partial != tt.partial)) {
			t.Errorf("parseRange(%q) = %d, %d, %v, %v; want %d, %d, %v, err %v",
				tt.h, start, end, partial, err, tt.start, tt.end, tt.partial, tt.err)
		}
	}
	// An empty file: any single range is ignored, several are refused.
	for _, h := range []string{"bytes=0-", "bytes=-0", "bytes=-5", "bytes=3-9"} {
		if start, end, partial, err := parseRange(h, 0); err != nil || start != 0 || end != 0 || partial {
			t.Errorf("parseRange(%q, 0) = %d, %d, %v, %v; want the whole empty file", h, start, end, partial, err)
		}
	}
	if _, _, _, err := parseRange("bytes=0-0,0-0", 0); err == nil {
		t.Error("several ranges of an empty file accepted")
	}
}

func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"", "bytes=0-", "bytes=-5", "bytes=3-9", "bytes=9-3", "bytes=1-2,3-4", "bytes=99999999999999999999-"} {
		f.Add(s, int64(100))
	}
	f.Fuzz(func(t *testing.T, h string, size int64) {
		if size < 0 {
			return
		}
		start, end, partial, err := parseRange(h, size)
		if err != nil {
			if len(err.Error()) > 4*maxEcho+200 { // quote escapes a byte in at most 4
				t.Fatalf("parseRange(%q, %d): error of %d bytes", h, size, len(err.Error()))
			}
			return
		}
		if start < 0 || end > size || start > end {
			t.Fatalf("parseRange(%q, %d) = [%d, %d): outside the file", h, size, start, end)
		}
		if partial && start == end {
			t.Fatalf("parseRange(%q, %d): an empty partial range", h, size)
		}
		if !partial && (start != 0 || end != size) {
			t.Fatalf("parseRange(%q, %d) = [%d, %d) for the whole file", h, size, start, end)
		}
		if strings.HasPrefix(h, "bytes=") && strings.Contains(h, ",") {
			t.Fatalf("parseRange(%q, %d) accepted several ranges", h, size)
		}
	})
}

// A file still being received whose first bytes are slow to come: the
// headers go out at once, so the puller (which waits DialTimeout for
// response headers) does not give up while the bytes are on their way.
func TestServeIncomingSendsHeadersFirst(t *testing.T) {
	tr := newTree(t, 3)
	content := randomBytes(1000)
	e := manifest.Entry{Path: "sub/slow.bin", Type: manifest.File, Mode: 0o644, Size: int64(len(content))}
	m := tr.snap.Manifest
	m.Entries = append(m.Entries, e)
	m.Sort()
	snap := snapshotOf(t, 3, tr.root, m)
	snap.Incoming = NewIncoming([]manifest.Entry{e}, 5*time.Second)
	env := startPeer(t, snap)
	g := newGrowing(t, snap.Incoming, tr.root, e.Path, content)
	g.begin()
	g.write(10) // fewer bytes than any buffer holds
	impatient := NewClient(ClientConfig{Secrets: [][]byte{testSecret}, DialTimeout: 300 * time.Millisecond})
	t.Cleanup(impatient.CloseIdleConnections)
	done := make(chan readResult, 1)
	go func() {
		var buf bytes.Buffer
		_, err := impatient.Fetch(context.Background(), env.addr, 3, e.Path, 0, &buf)
		done <- readResult{buf.Bytes(), err}
	}()
	time.Sleep(900 * time.Millisecond) // three header timeouts
	g.write(len(content))
	res := <-done
	if res.err != nil || !bytes.Equal(res.b, content) {
		t.Fatalf("slow pending file: %d bytes, %v", len(res.b), res.err)
	}
}

// A reader that finds its file discarded, while the writer begins the file
// again (a retry): the reader fails with the discard whichever it sees
// first (it never reads the new attempt's length against the old file),
// and the race detector sees no unguarded access to the file's state (make
// test runs -race).
func TestIncomingDiscardThenRetry(t *testing.T) {
	dir := t.TempDir()
	content := randomBytes(4096)
	in := NewIncoming([]manifest.Entry{{Path: "f", Type: manifest.File, Size: int64(len(content))}}, 5*time.Second)
	g := newGrowing(t, in, dir, "f", content)
	g.begin()
	rc, err := in.Open(context.Background(), "f", int64(len(content)), 0, g.onDisk)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	g.write(100)
	first := make([]byte, 10)
	if _, err := io.ReadFull(rc, first); err != nil { // the reader holds the first attempt's file
		t.Fatal(err)
	}
	in.End(g.e, errors.New("hash mismatch"))
	g.tmp.Close()
	os.Remove(g.tmp.Name())
	g.written = 0
	done := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(rc)
		done <- err
	}()
	g.begin() // the retry
	g.write(len(content))
	if err := <-done; err == nil || !strings.Contains(err.Error(), "discarded") {
		t.Fatalf("reader of a discarded file: %v", err)
	}
	g.land()
}

// Made before the plan with every file, an Incoming holds back readers of
// any file until Settle: the files the plan does not fetch are then read
// from disk, the others stay incoming.
func TestIncomingSettle(t *testing.T) {
	root := t.TempDir()
	kept, fetched := []byte("already in place"), randomBytes(8<<10)
	if err := os.WriteFile(filepath.Join(root, "kept"), kept, 0o644); err != nil {
		t.Fatal(err)
	}
	ek := manifest.Entry{Path: "kept", Type: manifest.File, Size: int64(len(kept))}
	ef := manifest.Entry{Path: "fetched", Type: manifest.File, Size: int64(len(fetched))}
	in := NewIncoming([]manifest.Entry{ek, ef}, 5*time.Second)
	if !in.Pending("kept") || !in.Pending("fetched") {
		t.Fatal("before Settle every file must be pending")
	}
	r, err := in.Open(context.Background(), "kept", ek.Size, 0, func() (*os.File, error) { return os.Open(filepath.Join(root, "kept")) })
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(r)
		got <- b
	}()
	select {
	case b := <-got:
		t.Fatalf("read %q before Settle", b)
	case <-time.After(100 * time.Millisecond):
	}
	in.Settle([]manifest.Entry{ef})
	select {
	case b := <-got:
		if !bytes.Equal(b, kept) {
			t.Fatalf("after Settle read %q, want %q", b, kept)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the reader of a file in place still waits after Settle")
	}
	if in.Pending("kept") || !in.Pending("fetched") {
		t.Fatalf("after Settle: kept pending %v (want false), fetched pending %v (want true)", in.Pending("kept"), in.Pending("fetched"))
	}
	g := newGrowing(t, in, root, "fetched", fetched)
	g.e = ef
	fr, err := in.Open(context.Background(), "fetched", ef.Size, 0, g.onDisk)
	if err != nil {
		t.Fatal(err)
	}
	defer fr.Close()
	g.begin()
	g.write(len(fetched))
	g.land()
	if b, err := io.ReadAll(fr); err != nil || !bytes.Equal(b, fetched) {
		t.Fatalf("fetched file: %d bytes, %v", len(b), err)
	}
}

// chunkedIncoming is an Incoming of one file of two 64 KiB chunks, begun
// in a temporary file: its entry, content and file.
func chunkedIncoming(t *testing.T, wait time.Duration) (*Incoming, manifest.Entry, []byte, *os.File) {
	t.Helper()
	const c = 64 << 10
	content := randomBytes(2 * c)
	e := manifest.Entry{Path: "f", Type: manifest.File, Size: 2 * c, Chunks: []manifest.Chunk{{Off: 0, Len: c}, {Off: c, Len: c}}}
	in := NewIncoming([]manifest.Entry{e}, wait)
	f, err := os.OpenFile(filepath.Join(t.TempDir(), ".fanout-tmp-f"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	in.Begin(e, f)
	return in, e, content, f
}

// The bytes of a chunk that has not landed are served as the writer
// announces them (Arriving), all but the chunk's last StreamTail bytes,
// which wait for it to land; then the reader goes on to the end.
func TestIncomingStreamsArrivingChunk(t *testing.T) {
	in, e, content, f := chunkedIncoming(t, 300*time.Millisecond)
	if _, err := f.WriteAt(content[:40<<10], 0); err != nil {
		t.Fatal(err)
	}
	in.Arriving(e, 0, 40<<10)
	r, err := in.Open(context.Background(), "f", e.Size, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b := make([]byte, e.Size)
	n, err := io.ReadAtLeast(r, b, 40<<10)
	if !errors.Is(err, ErrArrivalStalled) || n != 40<<10-StreamTail || !bytes.Equal(b[:n], content[:n]) {
		t.Fatalf("read %d bytes (%v) of a chunk announced to 40 KiB; want %d, then a stall", n, err, 40<<10-StreamTail)
	}
	if _, err := f.WriteAt(content[40<<10:64<<10], 40<<10); err != nil {
		t.Fatal(err)
	}
	in.Arriving(e, 0, 64<<10)
	if m, err := r.Read(b[n:]); err != nil || n+m != 64<<10-StreamTail {
		t.Fatalf("all of chunk 0 announced: read to %d (%v), want to %d: its tail waits", n+m, err, 64<<10-StreamTail)
	}
	in.Landed(e, 0)
	if _, err := f.WriteAt(content[64<<10:], 64<<10); err != nil {
		t.Fatal(err)
	}
	in.Landed(e, 1)
	rest, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(append(b[:64<<10-StreamTail:64<<10-StreamTail], rest...), content) {
		t.Fatalf("after both landed: %d more bytes (%v), want the rest of the file", len(rest), err)
	}
}

// Bytes announced and then dropped (the writer found them bad, or another
// writer's differ) fail a reader that sent some of them, so the host behind
// never completes a chunk from two streams; a reader that sent none goes on
// with the chunk as it lands.
func TestIncomingDroppedChunkFailsItsReaders(t *testing.T) {
	in, e, content, f := chunkedIncoming(t, 5*time.Second)
	bad := bytes.Clone(content[:32<<10])
	bad[0] ^= 1
	if _, err := f.WriteAt(bad, 0); err != nil {
		t.Fatal(err)
	}
	in.Arriving(e, 0, 32<<10)
	sent, _ := in.Open(context.Background(), "f", e.Size, 0, nil)
	defer sent.Close()
	b := make([]byte, 8<<10)
	if _, err := io.ReadFull(sent, b); err != nil {
		t.Fatal(err)
	}
	// A reader of the second chunk sent nothing of the first.
	other, _ := in.Open(context.Background(), "f", e.Size, 64<<10, nil)
	defer other.Close()
	in.Arriving(e, 0, 0)
	if _, err := f.WriteAt(content, 0); err != nil {
		t.Fatal(err)
	}
	in.Landed(e, 0)
	in.Landed(e, 1)
	if rest, err := io.ReadAll(sent); err == nil || !strings.Contains(err.Error(), "dropped") {
		t.Fatalf("a reader of dropped bytes read %d more bytes (%v), want it to fail", len(rest), err)
	}
	if got, err := io.ReadAll(other); err != nil || !bytes.Equal(got, content[64<<10:]) {
		t.Fatalf("a reader of the next chunk: %d bytes (%v), want the chunk", len(got), err)
	}
	fresh, _ := in.Open(context.Background(), "f", e.Size, 0, nil)
	defer fresh.Close()
	if got, err := io.ReadAll(fresh); err != nil || !bytes.Equal(got, content) {
		t.Fatalf("a reader begun after the drop: %d bytes (%v), want the file", len(got), err)
	}
}

// A reader of whole chunks (OpenLanded, for frames) reads nothing of a
// chunk before it lands; a reader that sent only landed chunks is not
// failed by a drop of the next one; and announcing fewer bytes than before
// takes the rest back as a drop does.
func TestIncomingArrivingReaders(t *testing.T) {
	in, e, content, f := chunkedIncoming(t, 200*time.Millisecond)
	if _, err := f.WriteAt(content, 0); err != nil {
		t.Fatal(err)
	}
	in.Arriving(e, 0, 40<<10)
	whole, _ := in.OpenLanded(context.Background(), "f", e.Size, 0, nil)
	defer whole.Close()
	if b, err := io.ReadAll(whole); len(b) != 0 || !errors.Is(err, ErrArrivalStalled) {
		t.Fatalf("a reader of whole chunks read %d bytes (%v) of a chunk not landed", len(b), err)
	}
	in.Landed(e, 0)
	in.Arriving(e, 1, 40<<10)
	first, _ := in.Open(context.Background(), "f", 64<<10, 0, nil)
	defer first.Close()
	b := make([]byte, 8<<10)
	if _, err := io.ReadFull(first, b); err != nil {
		t.Fatal(err)
	}
	in.Arriving(e, 1, 0)
	if rest, err := io.ReadAll(first); err != nil || len(rest) != 56<<10 {
		t.Fatalf("a reader of the landed chunk 0 only: %d more bytes (%v) after chunk 1 was dropped", len(rest), err)
	}
	in.Arriving(e, 1, 40<<10)
	second, _ := in.Open(context.Background(), "f", e.Size, 64<<10, nil)
	defer second.Close()
	if _, err := io.ReadFull(second, b); err != nil {
		t.Fatal(err)
	}
	in.Arriving(e, 1, 20<<10)
	if rest, err := io.ReadAll(second); !errors.Is(err, errDropped) {
		t.Fatalf("after fewer bytes were announced: %d more bytes (%v), want %v", len(rest), err, errDropped)
	}
}
