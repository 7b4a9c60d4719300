//go:generate go run gengear.go

package chunk

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
)

// Size bounds of Params: what Validate accepts.
const (
	// MinSize is the smallest Params.Min: the gear hash looks at the 64
	// bytes before a candidate cut, and those must lie inside the chunk.
	MinSize = 64
	// MaxSize is the largest Params.Max. A Chunker buffers twice Max,
	// and a receiver holds a chunk before it is verified.
	MaxSize = 64 << 20
)

// Params are the sizes a Chunker cuts by. Every chunk but the last of a
// stream is at least Min and at most Max bytes long; the last is at most
// Max. Cut points are chosen so that chunks average about Avg bytes.
//
// A chunk list is only comparable with another made with the same Params:
// a manifest records the Params its chunks were cut with.
type Params struct {
	Min int `json:"min"`
	Avg int `json:"avg"`
	Max int `json:"max"`
}

// DefaultParams returns the sizes fanout chunks files with: 32 KiB,
// 128 KiB and 512 KiB. See the package documentation for the measurements
// behind them.
func DefaultParams() Params {
	return Params{Min: 32 << 10, Avg: 128 << 10, Max: 512 << 10}
}

// Validate checks that p can be chunked with: MinSize <= Min <= Avg <=
// Max <= MaxSize, and Avg a power of two of at least 256.
func (p Params) Validate() error {
	switch {
	case p.Min < MinSize:
		return fmt.Errorf("chunk params %v: min below %d", p, MinSize)
	case p.Avg < 256 || p.Avg&(p.Avg-1) != 0:
		return fmt.Errorf("chunk params %v: avg is not a power of two of at least 256", p)
	case p.Min > p.Avg || p.Avg > p.Max:
		return fmt.Errorf("chunk params %v: want min <= avg <= max", p)
	case p.Max > MaxSize:
		return fmt.Errorf("chunk params %v: max above %d", p, MaxSize)
	}
	return nil
}

// String returns p as "min/avg/max" in bytes.
func (p Params) String() string { return fmt.Sprintf("%d/%d/%d", p.Min, p.Avg, p.Max) }

// A Cutter finds the cut points of content-defined chunks in a buffer its
// caller manages: FastCDC's normalized chunking over a gear rolling hash. A
// Chunker is a Cutter with a buffer of its own that it fills from a stream;
// a Cutter serves a caller that reads into buffers it shares with other
// goroutines and must not copy chunks out of. Both cut the same bytes
// alike. A Cutter is a value and may be used by several goroutines.
type Cutter struct {
	min, avg, max int
	// maskS is tested before avg bytes: two bits more than log2(avg), so a
	// cut is four times less likely than one in avg; maskL after avg, two
	// bits fewer, four times more likely. Chunk sizes then gather around
	// avg instead of spreading geometrically from min.
	maskS, maskL uint64
}

// NewCutter returns a Cutter for parameters p.
func NewCutter(p Params) (Cutter, error) {
	if err := p.Validate(); err != nil {
		return Cutter{}, err
	}
	return newCutter(p), nil
}

func newCutter(p Params) Cutter {
	b := bits.TrailingZeros(uint(p.Avg))
	// Contiguous high bits: bit k of the gear hash depends on the last k+1
	// bytes, the low bits on the last few only. The top three bits are left
	// out so that scan can test four bytes per step (see there); bit 60
	// depends on the last 61 bytes.
	return Cutter{
		min: p.Min, avg: p.Avg, max: p.Max,
		maskS: ^uint64(0) << (64 - (b + 2)) >> 3,
		maskL: ^uint64(0) << (64 - (b - 2)) >> 3,
	}
}

// Cut returns the length of the chunk that starts data, which begins at a
// cut point (the start of the stream, or where the last chunk ended). data
// must hold at least Params.Max bytes or be the rest of the stream: with
// less, a chunk that would have gone on past the end of data is cut there.
//
// The hash is a gear hash, h = h<<1 + gear[byte]: after 64 bytes the oldest
// byte has shifted out, so h at any position is a function of the 64 bytes
// that end there, whatever came before. A cut after the byte at i depends on
// those bytes and on whether i is before or after avg, never on where the
// stream started: an insertion moves only the cuts near it.
func (c Cutter) Cut(data []byte) int {
	n := len(data)
	if n <= c.min {
		return n
	}
	n = min(n, c.max)
	// Cut-point skipping: no cut is possible before min, so hashing starts
	// 64 bytes before it, just enough to fill the window.
	var h uint64
	for _, b := range data[c.min-64 : c.min] {
		h = h<<1 + gear[b]
	}
	mid := min(c.avg, n)
	h, k := scan(h, data[c.min:mid], c.maskS)
	if k >= 0 {
		return c.min + k
	}
	if _, k = scan(h, data[mid:n], c.maskL); k >= 0 {
		return mid + k
	}
	return n
}

// scan rolls the gear hash h over s and returns it with the length of s up
// to and including the first byte after which h&mask == 0, or -1 if there
// is none.
//
// It takes four bytes a step, keeping h shifted left by the bytes the step
// has still to add (3, 2, 1, 0), so that adding a byte costs one shift of a
// table value and one addition, the shifts off the chain of additions that
// limits speed: about twice the speed of one byte a step. That is why masks
// leave the top three bits out: shifted left by up to three they must not
// lose a bit.
func scan(h uint64, s []byte, mask uint64) (uint64, int) {
	g := &gear // a local, so the loop keeps it in a register
	m3, m2, m1 := mask<<3, mask<<2, mask<<1
	i := 0
	for ; len(s)-i >= 4; i += 4 {
		w := s[i : i+4 : i+4]
		h = h<<4 + g[w[0]]<<3
		if h&m3 == 0 {
			return h >> 3, i + 1
		}
		h += g[w[1]] << 2
		if h&m2 == 0 {
			return h >> 2, i + 2
		}
		h += g[w[2]] << 1
		if h&m1 == 0 {
			return h >> 1, i + 3
		}
		h += g[w[3]]
		if h&mask == 0 {
			return h, i + 4
		}
	}
	for ; i < len(s); i++ {
		h = h<<1 + g[s[i]]
		if h&mask == 0 {
			return h, i + 1
		}
	}
	return h, -1
}

// Chunk is one piece of a stream.
type Chunk struct {
	// Off is the offset of the chunk's first byte in the stream.
	Off int64
	// Data is the chunk's content, a slice of the Chunker's buffer (as
	// bufio.Reader.Peek returns): it is only valid until the next call of
	// Next or Reset, and its capacity may reach past the chunk into the
	// buffer, so it must not be appended to. (Leaving the capacity saves
	// BLAKE3 implementations that pad short inputs in place a copy.)
	Data []byte
}

// Len returns the chunk's length in bytes.
func (c Chunk) Len() int { return len(c.Data) }

// A Chunker cuts a stream into content-defined chunks. The same bytes give
// the same chunks whatever the reads return and on any platform; an
// insertion or a deletion changes only the chunks around it.
//
// It buffers up to twice Params.Max bytes (less for a short stream) and
// reuses that buffer, across streams too with Reset: cutting allocates
// nothing once the buffer is grown.
type Chunker struct {
	r   io.Reader
	c   Cutter
	buf []byte
	// buf[start:end] is read but not yet returned; off is the stream
	// offset of buf[start].
	start, end int
	off        int64
	eof        bool
	err        error // a read error other than io.EOF, returned for good
}

// initialBuf is the buffer a Chunker starts with; it grows to bufSize as
// the stream proves long enough.
const initialBuf = 64 << 10

// bufSize returns the buffer a Chunker with parameters p grows to. The
// buffer is moved down whenever less than Max bytes remain in it, so up to
// Max bytes are copied for each Max cut; a larger buffer copies less but
// costs memory for each file hashed at once, and 4·Max measured no faster
// than 2·Max (a copy is about a tenth of the cost of cutting).
func bufSize(p Params) int { return 2 * p.Max }

// New returns a Chunker of r with parameters p.
func New(r io.Reader, p Params) (*Chunker, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	c := &Chunker{c: newCutter(p)}
	c.Reset(r)
	return c, nil
}

// Reset makes c cut r from its start, keeping c's buffer and parameters.
func (c *Chunker) Reset(r io.Reader) {
	c.r = r
	c.start, c.end, c.off = 0, 0, 0
	c.eof, c.err = false, nil
}

// Next returns the next chunk, or io.EOF after the last one (an empty
// stream has none). A read error is returned as it is, and again by every
// later call; the chunks returned before it are right.
func (c *Chunker) Next() (Chunk, error) {
	if c.end-c.start < c.c.max && !c.eof && c.err == nil {
		c.fill()
	}
	if c.err != nil {
		return Chunk{}, c.err
	}
	if c.start == c.end {
		return Chunk{}, io.EOF
	}
	n := c.c.Cut(c.buf[c.start:c.end])
	ch := Chunk{Off: c.off, Data: c.buf[c.start : c.start+n]}
	c.start += n
	c.off += int64(n)
	return ch, nil
}

// fill reads until max bytes are buffered, the stream ends or a read
// fails.
func (c *Chunker) fill() {
	if c.start > 0 {
		c.end = copy(c.buf, c.buf[c.start:c.end])
		c.start = 0
	}
	for empty := 0; c.end < c.c.max; {
		if c.end == len(c.buf) {
			c.grow()
		}
		n, err := c.r.Read(c.buf[c.end:])
		if n < 0 || n > len(c.buf)-c.end {
			c.err = errors.New("chunk: reader returned an invalid count")
			return
		}
		c.end += n
		if err == io.EOF {
			c.eof = true
			return
		}
		if err != nil {
			c.err = err
			return
		}
		if n > 0 {
			empty = 0
		} else if empty++; empty == maxEmptyReads {
			c.err = io.ErrNoProgress
			return
		}
	}
}

// maxEmptyReads is how many reads in a row may return nothing, and no
// error, before a Chunker gives up with io.ErrNoProgress (as bufio does).
const maxEmptyReads = 100

// grow enlarges the buffer, which is full: doubling from initialBuf up to
// bufSize, so a small stream gets a small buffer.
func (c *Chunker) grow() {
	limit := bufSize(Params{Max: c.c.max})
	n := min(max(2*len(c.buf), initialBuf), limit)
	b := make([]byte, n)
	copy(b, c.buf[:c.end])
	c.buf = b
}
