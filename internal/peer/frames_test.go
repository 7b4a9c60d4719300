package peer

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

// textLike returns n bytes of generated log lines: what compresses.
func textLike(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 7))
	var b bytes.Buffer
	levels := []string{"INFO", "WARN", "DEBUG", "ERROR"}
	for b.Len() < n {
		fmt.Fprintf(&b, "2026-11-28T22:%02d:%02d.%03dZ %s worker=%d req=%08x path=/api/v1/items/%d status=%d bytes=%d\n",
			rng.IntN(60), rng.IntN(60), rng.IntN(1000), levels[rng.IntN(4)], rng.IntN(32),
			rng.Uint32(), rng.IntN(100000), 200+rng.IntN(4)*100, rng.IntN(1<<20))
	}
	return b.Bytes()[:n]
}

// randomData returns n random bytes: what does not compress.
func randomData(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 9))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// patientCompressor is a compressor for n chunks at once that never finds
// compressing too slow: tests that assert what compresses must not depend
// on the machine's load.
func patientCompressor(n int) *compressor {
	c := newCompressor(n)
	c.maxTime = time.Hour
	return c
}

// encodeFrames frames chunks as a server does, with comp (nil: raw).
func encodeFrames(t *testing.T, comp *compressor, chunks ...[]byte) []byte {
	t.Helper()
	var out bytes.Buffer
	fw := &frameWriter{w: &out, c: comp}
	for _, c := range chunks {
		if err := fw.chunk(c); err != nil {
			t.Fatal(err)
		}
	}
	return out.Bytes()
}

// kinds lists the kind of each frame of a framed body.
func kinds(t *testing.T, body []byte) []byte {
	t.Helper()
	var ks []byte
	r := bytes.NewReader(body)
	for r.Len() > 0 {
		k, _ := r.ReadByte()
		raw, err1 := readUvarint(r, 0)
		n, err2 := readUvarint(r, 0)
		if err1 != nil || err2 != nil || raw == 0 {
			t.Fatalf("unreadable frame header: %v %v", err1, err2)
		}
		r.Seek(int64(n), io.SeekCurrent)
		ks = append(ks, k)
	}
	return ks
}

func lensOf(chunks ...[]byte) []int64 {
	var l []int64
	for _, c := range chunks {
		l = append(l, int64(len(c)))
	}
	return l
}

// Text chunks travel compressed and random ones raw, and both decode to
// exactly what was framed.
func TestFramesRoundTrip(t *testing.T) {
	text, random, text2 := textLike(512<<10, 1), randomData(300<<10, 2), textLike(130<<10, 3)
	body := encodeFrames(t, patientCompressor(2), text, random, text2)
	if got := kinds(t, body); !bytes.Equal(got, []byte{frameZstd, frameRaw, frameZstd}) {
		t.Errorf("frame kinds %v, want zstd, raw, zstd", got)
	}
	if len(body) >= len(text)+len(random)+len(text2) {
		t.Errorf("framed body of %d bytes is not smaller than the %d it carries", len(body), len(text)+len(random)+len(text2))
	}
	var out bytes.Buffer
	n, err := readFrames(bytes.NewReader(body), newDecoder(), lensOf(text, random, text2), &out)
	if err != nil {
		t.Fatal(err)
	}
	want := append(append(append([]byte{}, text...), random...), text2...)
	if n != int64(len(want)) || !bytes.Equal(out.Bytes(), want) {
		t.Fatalf("decoded %d bytes, not the %d framed", n, len(want))
	}
}

// A chunk that does not shrink by at least 1/32 goes raw: its frame
// carries its bytes as they are.
func TestFramesRawWhenIncompressible(t *testing.T) {
	random := randomData(256<<10, 4)
	body := encodeFrames(t, patientCompressor(1), random)
	if got := kinds(t, body); !bytes.Equal(got, []byte{frameRaw}) {
		t.Fatalf("frame kinds %v, want raw", got)
	}
	hdr := appendFrameHeader(nil, frameRaw, len(random), len(random))
	if !bytes.Equal(body[:len(hdr)], hdr) || !bytes.Equal(body[len(hdr):], random) {
		t.Fatal("a raw frame is not its header then the chunk's bytes")
	}
	// Barely compressible: a random chunk with a short run of zeros.
	barely := randomData(256<<10, 5)
	clear(barely[:1024])
	if got := kinds(t, encodeFrames(t, patientCompressor(1), barely)); !bytes.Equal(got, []byte{frameRaw}) {
		t.Errorf("a chunk that saves under 1/32 went %v, want raw", got)
	}
}

// A chunk waits for a free compressor (never more at once than the
// compressor allows); when none frees up within maxCompressWait, or the
// request ends, it goes raw.
func TestFramesWaitForCompressor(t *testing.T) {
	c := patientCompressor(1)
	c.slots <- struct{}{} // the one worker is busy
	text := textLike(256<<10, 6)
	frame := func(done <-chan struct{}) []byte {
		var out bytes.Buffer
		if err := (&frameWriter{w: &out, c: c, done: done}).chunk(text); err != nil {
			t.Error(err)
		}
		return out.Bytes()
	}
	ended := make(chan struct{})
	close(ended)
	if got := kinds(t, frame(ended)); !bytes.Equal(got, []byte{frameRaw}) {
		t.Fatalf("frame kinds %v for a request that ended while every compressor was busy, want raw", got)
	}
	if got := kinds(t, frame(nil)); !bytes.Equal(got, []byte{frameRaw}) {
		t.Fatalf("frame kinds %v with every compressor busy past the wait, want raw", got)
	}
	result := make(chan []byte, 1)
	go func() { result <- frame(nil) }()
	<-c.slots // the worker frees up within the wait
	if got := kinds(t, <-result); !bytes.Equal(got, []byte{frameZstd}) {
		t.Fatalf("frame kinds %v once a compressor was free, want zstd", got)
	}
}

// A chunk whose first 64 KiB do not shrink goes raw without the rest
// being compressed, even if the rest would shrink: incompressible data
// costs the server a sample, not the chunk.
func TestFramesSampleDecides(t *testing.T) {
	chunk := append(randomData(sampleLen, 13), textLike(512<<10, 14)...)
	if got := kinds(t, encodeFrames(t, patientCompressor(1), chunk)); !bytes.Equal(got, []byte{frameRaw}) {
		t.Fatalf("frame kinds %v for a chunk with an incompressible first 64 KiB, want raw", got)
	}
	chunk = append(textLike(sampleLen, 15), textLike(512<<10, 16)...)
	if got := kinds(t, encodeFrames(t, patientCompressor(1), chunk)); !bytes.Equal(got, []byte{frameZstd}) {
		t.Fatalf("frame kinds %v for text, want zstd", got)
	}
}

// A chunk whose compression, projected from its sample's, would hold its
// frame back too long goes raw: the pullers get bytes, not a stall.
func TestFramesRawWhenCompressingTooSlow(t *testing.T) {
	c := newCompressor(1)
	c.maxTime = time.Nanosecond
	if got := kinds(t, encodeFrames(t, c, textLike(512<<10, 17))); !bytes.Equal(got, []byte{frameRaw}) {
		t.Fatalf("frame kinds %v when compressing is too slow, want raw", got)
	}
}

// zstdFrame builds a frame whose payload is zstd of content, declared to
// carry a chunk of rawLen bytes.
func zstdFrame(t *testing.T, content []byte, rawLen int) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	data := enc.EncodeAll(content, nil)
	return append(appendFrameHeader(nil, frameZstd, rawLen, len(data)), data...)
}

// allocated returns the bytes f allocates.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// A hostile peer cannot make the client decode more than a chunk's
// declared length: a zstd bomb (one frame of 32 MiB of zeros, or
// thousands of small frames concatenated in one payload) declared as a
// chunk of 1 MiB is refused, writes nothing, and allocates about a chunk.
func TestFramesBombRefused(t *testing.T) {
	const chunk = 1 << 20
	big := zstdFrame(t, make([]byte, 32<<20), chunk)
	enc, _ := zstd.NewWriter(nil)
	one := enc.EncodeAll(make([]byte, chunk), nil)
	var many []byte
	for range 2000 { // 2 GiB of zeros in a few dozen KiB
		many = append(many, one...)
	}
	concat := append(appendFrameHeader(nil, frameZstd, chunk, len(many)), many...)
	if len(many) >= chunk {
		t.Fatalf("test bomb of %d bytes is not smaller than its chunk", len(many))
	}
	dec := newDecoder()
	for name, body := range map[string][]byte{"one big frame": big, "concatenated frames": concat} {
		var out bytes.Buffer
		var err error
		alloc := allocated(func() { _, err = readFrames(bytes.NewReader(body), dec, []int64{chunk}, &out) })
		if !errors.Is(err, errFrame) {
			t.Errorf("%s: %v, want a bad frame", name, err)
		}
		if out.Len() != 0 {
			t.Errorf("%s: %d bytes written", name, out.Len())
		}
		if alloc > 8*chunk {
			t.Errorf("%s: decoding allocated %d bytes for a chunk of %d", name, alloc, chunk)
		}
	}
}

// Frames that break the format are refused, naming what is wrong.
func TestFramesMalformed(t *testing.T) {
	text := textLike(64<<10, 8)
	good := encodeFrames(t, patientCompressor(1), text)
	raw := append(appendFrameHeader(nil, frameRaw, len(text), len(text)), text...)
	enc, _ := zstd.NewWriter(nil)
	tooBigData := enc.EncodeAll(randomData(len(text), 9), nil) // incompressible: not smaller
	cases := map[string]struct {
		body []byte
		want string
	}{
		"unknown kind":            {append([]byte{7}, good[1:]...), "unknown kind"},
		"other chunk length":      {encodeFrames(t, patientCompressor(1), text[:1000]), "chunk of 1000 bytes, the chunk has 65536"},
		"raw with another length": {append(appendFrameHeader(nil, frameRaw, len(text), len(text)-1), text[:len(text)-1]...), "raw frame 0 carries"},
		"zstd not smaller":        {append(appendFrameHeader(nil, frameZstd, len(text), len(tooBigData)), tooBigData...), "zstd frame 0 of"},
		"zstd of less":            {zstdFrame(t, text[:1000], len(text)), "decodes to 1000 bytes"},
		"zstd garbage":            {append(appendFrameHeader(nil, frameZstd, len(text), 100), bytes.Repeat([]byte{0xAB}, 100)...), "zstd frame 0"},
		"trailing bytes":          {append(append([]byte{}, raw...), 0), "bytes after the last"},
		"length past 64 bits":     {append([]byte{frameRaw}, bytes.Repeat([]byte{0xff}, 11)...), "past 64 bits"},
	}
	for name, c := range cases {
		var out bytes.Buffer
		_, err := readFrames(bytes.NewReader(c.body), newDecoder(), []int64{int64(len(text))}, &out)
		if !errors.Is(err, errFrame) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want a bad frame saying %q", name, err, c.want)
		}
	}
}

// A stream cut anywhere fails as cut short (never as complete), and what
// reached the writer is whole chunks, in order.
func TestFramesTruncated(t *testing.T) {
	a, b := textLike(40<<10, 10), randomData(30<<10, 11)
	body := encodeFrames(t, patientCompressor(1), a, b)
	dec := newDecoder()
	for cut := 0; cut < len(body); cut += 1 + cut/50 {
		var out bytes.Buffer
		n, err := readFrames(bytes.NewReader(body[:cut]), dec, lensOf(a, b), &out)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("cut at %d of %d: %v, want cut short", cut, len(body), err)
		}
		if n != 0 && n != int64(len(a)) || !bytes.Equal(out.Bytes(), a[:n]) {
			t.Fatalf("cut at %d: %d bytes written, want 0 or the first chunk", cut, n)
		}
	}
}

// A writer's error is the writer's, not the peer's.
func TestFramesWriteError(t *testing.T) {
	text := textLike(10<<10, 12)
	boom := errors.New("disk full")
	_, err := readFrames(bytes.NewReader(encodeFrames(t, nil, text)), newDecoder(), lensOf(text), failingWriter{boom})
	var we *writeError
	if !errors.As(err, &we) || !errors.Is(err, boom) {
		t.Fatalf("%v, want the writer's error", err)
	}
}

// A range framed with compression overlapping the writes decodes to its
// chunks, in order, whether compressed or not.
func TestFrameWriterChunks(t *testing.T) {
	parts := [][]byte{textLike(300<<10, 40), randomData(200<<10, 41), textLike(128<<10, 42), textLike(700<<10, 43), randomData(5, 44)}
	var src []byte
	for _, p := range parts {
		src = append(src, p...)
	}
	for _, c := range []*compressor{nil, patientCompressor(2)} {
		var body bytes.Buffer
		if err := (&frameWriter{w: &body, c: c}).chunks(bytes.NewReader(src), lensOf(parts...)); err != nil {
			t.Fatal(err)
		}
		want := []byte{frameZstd, frameRaw, frameZstd, frameZstd, frameRaw}
		if c == nil {
			want = []byte{frameRaw, frameRaw, frameRaw, frameRaw, frameRaw}
		}
		if got := kinds(t, body.Bytes()); !bytes.Equal(got, want) {
			t.Errorf("compressor %v: frame kinds %v, want %v", c != nil, got, want)
		}
		var out bytes.Buffer
		if _, err := readFrames(bytes.NewReader(body.Bytes()), newDecoder(), lensOf(parts...), &out); err != nil || !bytes.Equal(out.Bytes(), src) {
			t.Fatalf("compressor %v: %v, content equal %v", c != nil, err, bytes.Equal(out.Bytes(), src))
		}
	}
}

// A source that ends early fails the range after the whole frames before
// it; a writer that fails stops it. Either way no compression is left
// running.
func TestFrameWriterChunksFailures(t *testing.T) {
	parts := [][]byte{textLike(200<<10, 45), textLike(200<<10, 46), textLike(200<<10, 47)}
	src := append(append(append([]byte{}, parts[0]...), parts[1]...), parts[2][:1000]...)
	var body bytes.Buffer
	err := (&frameWriter{w: &body, c: patientCompressor(1)}).chunks(bytes.NewReader(src), lensOf(parts...))
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("source cut short: %v", err)
	}
	var out bytes.Buffer
	n, _ := readFrames(bytes.NewReader(body.Bytes()), newDecoder(), lensOf(parts...), &out)
	if n != int64(len(parts[0])) || !bytes.Equal(out.Bytes(), parts[0]) {
		t.Fatalf("source cut in chunk 2: %d bytes framed before, want chunk 0 whole (chunk 1 was being compressed)", n)
	}
	boom := errors.New("connection reset")
	c := patientCompressor(1)
	err = (&frameWriter{w: failingWriter{boom}, c: c}).chunks(bytes.NewReader(append(append([]byte{}, parts[0]...), parts[1]...)), lensOf(parts[0], parts[1]))
	if !errors.Is(err, boom) {
		t.Fatalf("writer failed: %v", err)
	}
	if len(c.slots) != 0 {
		t.Fatalf("%d compressions still running after chunks returned", len(c.slots))
	}
}
