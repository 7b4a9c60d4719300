package peer

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
)

// Compressed ranges (frames).
//
// A client that asks for a run of whole chunks with the query parameter
// enc=zstd (inside the signed request URI) may get the answer as a
// sequence of frames, one per chunk, in order, instead of the raw bytes.
// The server says so with the header X-Fanout-Frames: 1 (the frame format
// version); without it the body is the raw range, as from a server that
// predates frames or chose not to compress. A frame is
//
//	kind      1 byte: 0 raw, 1 zstd
//	rawLen    uvarint: the chunk's length
//	dataLen   uvarint: the length of what follows (rawLen for raw)
//	data      dataLen bytes
//
// The client names the chunk lengths it expects (from the verified
// manifest), so a frame for a chunk of another length, a zstd frame not
// smaller than its chunk, a zstd payload that decodes to anything but
// exactly rawLen bytes, bytes after the last frame and a stream cut short
// are all refused. Decoding never produces more than the chunk's declared
// length: a zstd bomb ends in an error, not in memory or disk. The decoded
// bytes then go to the same writer the raw range would, so every chunk is
// still verified by its BLAKE3 hash on its uncompressed bytes.

// FramesVersion is the frame format this build writes and reads, sent in
// the X-Fanout-Frames header of a framed answer. A client that gets
// another version fails the request and says to upgrade.
const FramesVersion = 1

// EncodingZstd is the value of the enc query parameter that asks for zstd
// frames.
const EncodingZstd = "zstd"

// Frame kinds.
const (
	frameRaw  byte = 0
	frameZstd byte = 1
)

// frameHeaderMax is the longest frame header: a kind and two uvarints.
const frameHeaderMax = 1 + 2*binary.MaxVarintLen64

// minSaving is the fraction (1/minSaving) of a chunk compression must save
// for the chunk to be sent compressed: a chunk that does not shrink, or
// barely, goes raw and costs the receiver no decoding.
const minSaving = 32

// headerFrames is the response header that marks a framed body.
const headerFrames = "X-Fanout-Frames"

// errFrame marks a body that breaks the frame format (as opposed to a
// write error of the receiving side).
var errFrame = errors.New("bad frame")

// appendFrameHeader appends a frame header to b.
func appendFrameHeader(b []byte, kind byte, rawLen, dataLen int) []byte {
	b = append(b, kind)
	b = binary.AppendUvarint(b, uint64(rawLen))
	return binary.AppendUvarint(b, uint64(dataLen))
}

// compressor hands out zstd encoders to a bounded number of chunks at once,
// so compressing for peers cannot take more than that many cores. A chunk
// waits up to maxCompressWait for a free encoder, then goes raw: encoders
// busy for longer mean the CPU, not the link, is what limits this host,
// and raw bytes keep the pullers fed (and within their stall timeout).
// Encoders are used with EncodeAll only, which starts no goroutine.
type compressor struct {
	slots chan struct{}
	pool  sync.Pool
	// maxTime is maxCompressTime (tests that assert what compresses
	// lift it: the race detector makes zstd tens of times slower).
	maxTime time.Duration
}

// maxCompressWait bounds how long a chunk waits for a free encoder.
const maxCompressWait = 100 * time.Millisecond

// sampleLen is the prefix of a chunk compressed first: a chunk whose
// prefix does not shrink is sent raw without compressing the rest, so
// incompressible data (media, archives, encrypted or random bytes) costs a
// fraction of its compression.
const sampleLen = 64 << 10

// maxCompressTime bounds the time a chunk's compression may hold its frame
// back, as projected from the sample's: a frame is sent only once its
// chunk is compressed, and a CPU so starved that this takes longer would
// make the pullers wait (and, past their stall timeout, leave). At
// zstd's fastest level a 2 MiB chunk takes milliseconds; the bound is met
// only under extreme load (or the race detector), and the chunk goes raw.
const maxCompressTime = time.Second

// newCompressor returns a compressor for n (at least 1) chunks at once.
func newCompressor(n int) *compressor {
	c := &compressor{slots: make(chan struct{}, n), maxTime: maxCompressTime}
	c.pool.New = func() any {
		// The fastest level: a peer compresses for every puller it
		// serves, and on a fast link CPU, not bytes, is what runs out.
		// Chunks are verified by BLAKE3, so zstd's own checksum is skipped.
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest),
			zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false))
		if err != nil {
			panic(fmt.Sprintf("zstd encoder with fixed options: %v", err))
		}
		return enc
	}
	return c
}

// compress returns the zstd form of raw in dst's storage, and true, when
// the result saves at least 1/minSaving of raw; otherwise false (send
// raw). It gives up (false) when no encoder is free within
// maxCompressWait or done closes first.
func (c *compressor) compress(done <-chan struct{}, raw, dst []byte) ([]byte, bool) {
	select {
	case c.slots <- struct{}{}:
	default:
		t := time.NewTimer(maxCompressWait)
		defer t.Stop()
		select {
		case c.slots <- struct{}{}:
		case <-t.C:
			return dst, false
		case <-done:
			return dst, false
		}
	}
	defer func() { <-c.slots }()
	enc := c.pool.Get().(*zstd.Encoder)
	defer c.pool.Put(enc)
	if len(raw) >= 2*sampleLen {
		t0 := time.Now()
		out := enc.EncodeAll(raw[:sampleLen], dst[:0])
		took := time.Since(t0)
		if !saves(len(out), sampleLen) || took*time.Duration(len(raw)/sampleLen) > c.maxTime {
			return out, false
		}
		dst = out
	}
	out := enc.EncodeAll(raw, dst[:0])
	return out, saves(len(out), len(raw))
}

// saves reports whether n compressed bytes for raw bytes save enough to be
// worth decoding.
func saves(n, raw int) bool { return n < raw-raw/minSaving }

// frameWriter writes the chunks of a range as frames.
type frameWriter struct {
	w    io.Writer
	c    *compressor     // nil: every frame raw
	done <-chan struct{} // closed when the request ends
	// compressed, when set, is told of each chunk sent compressed: its
	// length and the length of its zstd form.
	compressed func(raw, sent int64)
	comp       []byte // chunk's buffer for compressed bytes
}

// chunk writes one chunk as a frame: compressed if that saves enough.
func (fw *frameWriter) chunk(raw []byte) error {
	f := fw.encode(raw, fw.comp)
	fw.comp = f.comp[:0]
	return fw.write(f)
}

// frame is one chunk ready to send: its header and data (data is the raw
// chunk or comp, the buffer its zstd form went to).
type frame struct {
	hdr, data, comp []byte
}

// encode makes the frame of raw, compressing into comp's storage if that
// saves enough. It uses fw's compressor and settings only, so frames of
// the same writer may be encoded at once.
func (fw *frameWriter) encode(raw, comp []byte) frame {
	kind, data := frameRaw, raw
	if fw.c != nil {
		out, ok := fw.c.compress(fw.done, raw, comp)
		comp = out
		if ok {
			kind, data = frameZstd, out
			if fw.compressed != nil {
				fw.compressed(int64(len(raw)), int64(len(out)))
			}
		}
	}
	return frame{hdr: appendFrameHeader(make([]byte, 0, frameHeaderMax), kind, len(raw), len(data)), data: data, comp: comp}
}

func (fw *frameWriter) write(f frame) error {
	if _, err := fw.w.Write(f.hdr); err != nil {
		return err
	}
	_, err := fw.w.Write(f.data)
	return err
}

// chunks writes one frame per chunk of lens, read in turn from src, and
// compresses chunk k+1 while frame k is written: on a link slower than the
// compressor the two overlap rather than add up. A range compresses one
// chunk at a time. Reads and writes stay on
// the calling goroutine; each compression runs on a goroutine of its own
// that chunks always waits for (it never blocks on I/O, and gives up its
// wait for an encoder when fw.done closes), so none outlives the call.
func (fw *frameWriter) chunks(src io.Reader, lens []int64) error {
	var most int64
	for _, l := range lens {
		most = max(most, l)
	}
	var raws, comps [2][]byte
	for i := range raws {
		raws[i] = make([]byte, most)
	}
	type job struct {
		done chan struct{}
		f    frame
	}
	var pending *job // the previous chunk, being compressed
	finish := func() (frame, bool) {
		if pending == nil {
			return frame{}, false
		}
		<-pending.done
		f := pending.f
		pending = nil
		return f, true
	}
	defer finish()
	for k, l := range lens {
		raw := raws[k%2][:l]
		if _, err := io.ReadFull(src, raw); err != nil {
			return fmt.Errorf("read chunk %d: %w", k, err)
		}
		j := &job{done: make(chan struct{})}
		comp, prev := comps[k%2], pending
		go func() {
			defer close(j.done)
			if prev != nil {
				// One compression at a time per range: the next
				// chunk's must not wait for an encoder this range
				// holds (and go raw for it).
				<-prev.done
			}
			j.f = fw.encode(raw, comp)
		}()
		if f, ok := finish(); ok {
			comps[(k-1)%2] = f.comp[:0]
			if err := fw.write(f); err != nil {
				pending = j
				return err
			}
		}
		pending = j
	}
	if f, ok := finish(); ok {
		return fw.write(f)
	}
	return nil
}

// newDecoder returns a zstd decoder for DecodeAll alone (no goroutine),
// whose output is capped by its destination's capacity and whose window is
// bounded, so a hostile frame can make it allocate no more than a chunk.
func newDecoder() *zstd.Decoder {
	d, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(max(4, runtime.GOMAXPROCS(0))),
		zstd.WithDecodeAllCapLimit(true),
		zstd.WithDecoderMaxWindow(maxFrameWindow),
		zstd.WithDecoderMaxMemory(maxFrameWindow),
		zstd.IgnoreChecksum(true))
	if err != nil {
		panic(fmt.Sprintf("zstd decoder with fixed options: %v", err))
	}
	return d
}

// maxFrameWindow bounds the zstd window (and any output) of one frame. It
// is above the largest chunk the default chunking makes (2 MiB) with room;
// a chunk larger than it must come raw.
const maxFrameWindow = 64 << 20

// frameReader reads the frames of a range whose chunk lengths are known.
type frameReader struct {
	br   *bufio.Reader
	dec  *zstd.Decoder
	raw  []byte // the chunk being decoded
	data []byte // its compressed bytes
}

// readFrames reads one frame per chunk of lens from r, writes each chunk's
// decoded bytes to w, and checks that the body ends after the last. It
// returns the chunk bytes written. A body that breaks the format returns
// an error wrapping errFrame (or io.ErrUnexpectedEOF, cut short); an error
// of w is returned wrapped in *writeError.
func readFrames(r io.Reader, dec *zstd.Decoder, lens []int64, w io.Writer) (int64, error) {
	fr := &frameReader{br: bufio.NewReaderSize(r, 64<<10), dec: dec}
	var n int64
	for i, want := range lens {
		b, err := fr.next(i, want)
		if err != nil {
			return n, err
		}
		m, err := w.Write(b)
		n += int64(m)
		if err != nil {
			return n, &writeError{err}
		}
	}
	if _, err := fr.br.ReadByte(); err == nil {
		return n, fmt.Errorf("%w: bytes after the last of %d chunks", errFrame, len(lens))
	} else if err != io.EOF {
		return n, err
	}
	return n, nil
}

// next reads frame i, for a chunk of want bytes, and returns its bytes.
func (fr *frameReader) next(i int, want int64) ([]byte, error) {
	kind, err := fr.br.ReadByte()
	if err != nil {
		return nil, eofIsUnexpected(err)
	}
	rawLen, err := readUvarint(fr.br, i)
	if err != nil {
		return nil, err
	}
	dataLen, err := readUvarint(fr.br, i)
	if err != nil {
		return nil, err
	}
	if rawLen != uint64(want) {
		return nil, fmt.Errorf("%w: frame %d is for a chunk of %d bytes, the chunk has %d", errFrame, i, rawLen, want)
	}
	switch kind {
	case frameRaw:
		if dataLen != rawLen {
			return nil, fmt.Errorf("%w: raw frame %d carries %d bytes for a chunk of %d", errFrame, i, dataLen, rawLen)
		}
		fr.raw = grow(fr.raw, want)
		if _, err := io.ReadFull(fr.br, fr.raw); err != nil {
			return nil, eofIsUnexpected(err)
		}
		return fr.raw, nil
	case frameZstd:
		// The server sends raw what does not shrink: a compressed frame
		// as large as its chunk is not one it would send.
		if dataLen == 0 || dataLen >= rawLen {
			return nil, fmt.Errorf("%w: zstd frame %d of %d bytes for a chunk of %d", errFrame, i, dataLen, rawLen)
		}
		if want > maxFrameWindow {
			return nil, fmt.Errorf("%w: zstd frame %d for a chunk of %d bytes, more than the %d a frame may decode to", errFrame, i, want, maxFrameWindow)
		}
		fr.data = grow(fr.data, int64(dataLen))
		if _, err := io.ReadFull(fr.br, fr.data); err != nil {
			return nil, eofIsUnexpected(err)
		}
		fr.raw = grow(fr.raw, want)
		// Output is capped by the capacity (WithDecodeAllCapLimit): never
		// more than the chunk's declared length.
		out, err := fr.dec.DecodeAll(fr.data, fr.raw[:0:want])
		if err != nil {
			return nil, fmt.Errorf("%w: zstd frame %d: %v", errFrame, i, err)
		}
		if int64(len(out)) != want {
			return nil, fmt.Errorf("%w: zstd frame %d decodes to %d bytes, the chunk has %d", errFrame, i, len(out), want)
		}
		return out, nil
	}
	return nil, fmt.Errorf("%w: frame %d of unknown kind %d", errFrame, i, kind)
}

// grow returns b resized to n bytes, reusing its storage when it fits.
func grow(b []byte, n int64) []byte {
	if int64(cap(b)) >= n {
		return b[:n]
	}
	return make([]byte, n)
}

func eofIsUnexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// readUvarint reads one uvarint of frame i's header. A stream that ends
// in it is cut short; one that runs past 64 bits breaks the format.
func readUvarint(br io.ByteReader, i int) (uint64, error) {
	var x uint64
	for shift := uint(0); shift < 64; shift += 7 {
		b, err := br.ReadByte()
		if err != nil {
			return 0, eofIsUnexpected(err)
		}
		if b < 0x80 {
			if shift == 63 && b > 1 {
				break
			}
			return x | uint64(b)<<shift, nil
		}
		x |= uint64(b&0x7f) << shift
	}
	return 0, fmt.Errorf("%w: frame %d header: a length past 64 bits", errFrame, i)
}

// writeError is an error of the writer a body is copied to, not of the
// peer.
type writeError struct{ err error }

func (e *writeError) Error() string { return e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }
