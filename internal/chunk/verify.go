package chunk

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/zeebo/blake3"
)

// Sum is the BLAKE3-256 hash of a chunk's bytes.
type Sum [32]byte

// Hash returns the Sum of data.
func Hash(data []byte) Sum { return blake3.Sum256(data) }

// String returns s in lowercase hex, as manifests write it.
func (s Sum) String() string { return hex.EncodeToString(s[:]) }

// ParseSum decodes a Sum from 64 lowercase or uppercase hex digits.
func ParseSum(s string) (Sum, error) {
	var sum Sum
	if len(s) != 2*len(sum) {
		return Sum{}, fmt.Errorf("chunk hash %.70q is not 64 hex digits", s)
	}
	if _, err := hex.Decode(sum[:], []byte(s)); err != nil {
		return Sum{}, fmt.Errorf("chunk hash %.70q is not hex", s)
	}
	return sum, nil
}

// Ref describes a chunk a stream should hold: its length and the hash of
// its bytes.
type Ref struct {
	Len int64
	Sum Sum
}

// A MismatchError reports the first chunk whose bytes do not hash to its
// Ref's Sum.
type MismatchError struct {
	// Index is the chunk's position in the refs given to NewVerifier.
	Index int
	// Off is the chunk's offset in the stream given to the Verifier, and
	// Len its length.
	Off, Len int64
	Want     Sum
	Got      Sum
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("chunk %d (bytes %d..%d) hashes to %.16s..., want %.16s...", e.Index, e.Off, e.Off+e.Len, e.Got, e.Want)
}

// ErrTooLong is returned by Verifier.Write when a stream holds more bytes
// than its chunks.
var ErrTooLong = errors.New("more bytes than the chunks hold")

// ErrClosed is returned by a Verifier's Write after Close.
var ErrClosed = errors.New("write to a closed verifier")

// Verifier block sizes: bytes are copied into blocks of blockSize, and at
// most maxBlocks of them wait for or are in the hasher, so a verifier holds
// at most 1.25 MiB.
const (
	blockSize = 256 << 10
	maxBlocks = 4
)

// A Verifier checks, as they are written, that the bytes of a stream are
// the chunks of a list of Refs, in order. It hashes on a goroutine of its
// own: Write copies the bytes and returns, so receiving, writing to disk and
// hashing overlap, each on its core. A stream of at most 256 KiB is hashed
// in Write instead (the goroutine would cost more than it saves).
//
// Write reports the first bad chunk (a *MismatchError) as soon as the hash
// shows it, so a receiver can drop a bad source early; Close waits for the
// last hash and reports the outcome of the whole stream. Close must be
// called, even after an error, to stop the goroutine. A Verifier is for one
// writer; Verified may be called from any goroutine.
type Verifier struct {
	refs []Ref

	// The writer's side.
	i      int    // chunk being written
	left   int64  // bytes of it still to come
	off    int64  // bytes written so far
	start  int64  // offset of chunk i
	blk    []byte // block being filled
	blocks int    // blocks allocated
	closed bool

	// work carries blocks to the hasher, free brings them back; done is
	// closed when the hasher exits. All nil for a stream hashed in Write.
	work chan piece
	free chan []byte
	done chan struct{}

	h        *blake3.Hasher // the hasher goroutine's, or Write's when synchronous
	hashed   int64          // the hasher's offset of the chunk it hashes
	verified atomic.Int64
	failed   atomic.Pointer[MismatchError]
}

// piece is a block's worth of chunk i, the end of the chunk when end is
// set.
type piece struct {
	data []byte
	i    int
	end  bool
}

// NewVerifier returns a Verifier of a stream made of the chunks refs
// describe, in order; chunk 0 starts the stream. A chunk may be empty; a
// negative length is a programming error and panics.
func NewVerifier(refs []Ref) *Verifier {
	v := &Verifier{refs: refs, h: blake3.New()}
	var total int64
	for i, r := range refs {
		if r.Len < 0 {
			panic(fmt.Sprintf("chunk: NewVerifier: chunk %d has length %d", i, r.Len))
		}
		total += r.Len
	}
	if total > blockSize {
		v.work = make(chan piece, maxBlocks)
		v.free = make(chan []byte, maxBlocks)
		v.done = make(chan struct{})
		go v.hashLoop()
	}
	if len(refs) > 0 {
		v.left = refs[0].Len
	}
	v.skipEmpty()
	return v
}

// Verified returns how many chunks, from the first, have been hashed and
// found good so far.
func (v *Verifier) Verified() int { return int(v.verified.Load()) }

// Write takes the next bytes of the stream. It returns an error, and takes
// none of p, once a chunk was found bad (*MismatchError), when p goes past
// the last chunk (ErrTooLong: the bytes up to the end are taken) and after
// Close.
func (v *Verifier) Write(p []byte) (int, error) {
	if v.closed {
		return 0, ErrClosed
	}
	if err := v.failed.Load(); err != nil {
		return 0, err
	}
	n := 0
	for len(p) > 0 {
		if v.i == len(v.refs) {
			return n, fmt.Errorf("%w: they end at byte %d", ErrTooLong, v.off)
		}
		k := int(min(int64(len(p)), v.left))
		if v.work == nil {
			v.h.Write(p[:k])
		} else {
			k = v.copyIn(p[:k])
		}
		p = p[k:]
		n += k
		v.off += int64(k)
		v.left -= int64(k)
		if v.left == 0 {
			v.endChunk()
		}
	}
	return n, nil
}

// copyIn copies as much of p as fits into the current block, sending the
// block on when it is full. It returns the bytes taken.
func (v *Verifier) copyIn(p []byte) int {
	if v.blk == nil {
		v.blk = v.block()
	}
	k := copy(v.blk[len(v.blk):cap(v.blk)], p)
	v.blk = v.blk[:len(v.blk)+k]
	if len(v.blk) == cap(v.blk) && v.left > int64(k) {
		v.work <- piece{data: v.blk, i: v.i}
		v.blk = nil
	}
	return k
}

// block returns an empty block: a new one while fewer than maxBlocks
// exist, else one the hasher is done with (waiting for it).
func (v *Verifier) block() []byte {
	select {
	case b := <-v.free:
		return b[:0]
	default:
	}
	if v.blocks < maxBlocks {
		v.blocks++
		return make([]byte, 0, blockSize)
	}
	return (<-v.free)[:0]
}

// endChunk finishes chunk i, whose bytes are all written, and moves to the
// next non-empty chunk.
func (v *Verifier) endChunk() {
	if v.work == nil {
		v.check(v.i, v.start, v.h.Sum(nil))
		v.h.Reset()
	} else {
		v.work <- piece{data: v.blk, i: v.i, end: true}
		v.blk = nil
	}
	v.i++
	v.start = v.off
	if v.i < len(v.refs) {
		v.left = v.refs[v.i].Len
	}
	v.skipEmpty()
}

// skipEmpty ends every empty chunk at the writer's position.
func (v *Verifier) skipEmpty() {
	for v.i < len(v.refs) && v.left == 0 {
		v.endChunk()
	}
}

// check compares the sum of chunk i, at offset off, with its Ref.
func (v *Verifier) check(i int, off int64, sum []byte) {
	if v.failed.Load() != nil {
		return
	}
	if Sum(sum) != v.refs[i].Sum {
		v.failed.Store(&MismatchError{Index: i, Off: off, Len: v.refs[i].Len, Want: v.refs[i].Sum, Got: Sum(sum)})
		return
	}
	v.verified.Add(1)
}

// hashLoop is the hasher goroutine: it hashes the blocks Write sends, in
// order, until Close closes work.
func (v *Verifier) hashLoop() {
	defer close(v.done)
	for p := range v.work {
		if v.failed.Load() == nil {
			v.h.Write(p.data)
			if p.end {
				v.check(p.i, v.hashed, v.h.Sum(nil))
				v.hashed += v.refs[p.i].Len
				v.h.Reset()
			}
		}
		if p.data != nil {
			v.free <- p.data
		}
	}
}

// Close waits until every chunk written is hashed and returns nil when the
// stream held exactly the chunks of the refs, each good. Otherwise it
// returns the first bad chunk's *MismatchError, or an error wrapping
// io.ErrUnexpectedEOF that names the chunk the stream ended in. Close stops
// the Verifier's goroutine; calling it again returns the same result.
func (v *Verifier) Close() error {
	if !v.closed {
		v.closed = true
		if v.work != nil {
			close(v.work)
			<-v.done
		}
	}
	if err := v.failed.Load(); err != nil {
		return err
	}
	if v.i < len(v.refs) {
		return fmt.Errorf("stream ended at byte %d, inside chunk %d (bytes %d..%d): %w",
			v.off, v.i, v.start, v.start+v.refs[v.i].Len, io.ErrUnexpectedEOF)
	}
	return nil
}
