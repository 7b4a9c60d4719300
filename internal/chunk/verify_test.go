package chunk

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/zeebo/blake3"
)

// refsOf cuts data with p and returns its refs.
func refsOf(t testing.TB, data []byte, p Params) []Ref {
	t.Helper()
	c, err := New(bytes.NewReader(data), p)
	if err != nil {
		t.Fatal(err)
	}
	var refs []Ref
	for {
		ch, err := c.Next()
		if err == io.EOF {
			return refs
		}
		if err != nil {
			t.Fatal(err)
		}
		refs = append(refs, Ref{Len: int64(ch.Len()), Sum: Hash(ch.Data)})
	}
}

// writeInPieces writes data to w in pieces of random sizes up to maxPiece.
func writeInPieces(w io.Writer, data []byte, maxPiece int, seed uint64) error {
	r := rand.New(rand.NewPCG(seed, 1))
	for len(data) > 0 {
		n := min(len(data), 1+r.IntN(maxPiece))
		if _, err := w.Write(data[:n]); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

func TestVerifierGood(t *testing.T) {
	p := Params{Min: 16 << 10, Avg: 64 << 10, Max: 256 << 10}
	for _, size := range []int{0, 1, 100 << 10, 256 << 10, 256<<10 + 1, 3 << 20} {
		data := randomBytes(size, uint64(size))
		refs := refsOf(t, data, p)
		for _, piece := range []int{1 << 20, 4096, 777} {
			v := NewVerifier(refs)
			if err := writeInPieces(v, data, piece, uint64(piece)); err != nil {
				t.Fatalf("%d bytes in pieces of %d: Write: %v", size, piece, err)
			}
			if err := v.Close(); err != nil {
				t.Fatalf("%d bytes in pieces of %d: Close: %v", size, piece, err)
			}
			if v.Verified() != len(refs) {
				t.Errorf("%d bytes: Verified() = %d, want %d", size, v.Verified(), len(refs))
			}
		}
	}
}

func TestVerifierEmptyChunks(t *testing.T) {
	empty := Ref{Sum: Hash(nil)}
	one := Ref{Len: 3, Sum: Hash([]byte("abc"))}
	v := NewVerifier([]Ref{empty, one, empty, empty})
	if _, err := v.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil || v.Verified() != 4 {
		t.Fatalf("Close = %v, Verified = %d; want nil, 4", err, v.Verified())
	}
	v = NewVerifier([]Ref{{Sum: Hash([]byte("x"))}})
	if err := v.Close(); !isMismatch(err, 0) {
		t.Errorf("an empty chunk with the hash of other bytes: %v", err)
	}
}

func isMismatch(err error, i int) bool {
	var me *MismatchError
	return errors.As(err, &me) && me.Index == i
}

func TestVerifierReportsFirstBadChunk(t *testing.T) {
	p := Params{Min: 16 << 10, Avg: 64 << 10, Max: 256 << 10}
	for _, size := range []int{200 << 10, 4 << 20} {
		data := randomBytes(size, 9)
		refs := refsOf(t, data, p)
		bad := len(refs) / 2
		var off int64
		for _, r := range refs[:bad] {
			off += r.Len
		}
		corrupt := bytes.Clone(data)
		corrupt[off+refs[bad].Len-1] ^= 1 // the last byte of chunk bad
		corrupt[len(corrupt)-1] ^= 1      // and the last chunk
		v := NewVerifier(refs)
		werr := writeInPieces(v, corrupt, 64<<10, 1)
		err := v.Close()
		var me *MismatchError
		if !errors.As(err, &me) || me.Index != bad || me.Off != off || me.Len != refs[bad].Len || me.Want != refs[bad].Sum {
			t.Fatalf("%d bytes, chunk %d of %d corrupt: Close = %v", size, bad, len(refs), err)
		}
		if werr != nil && !isMismatch(werr, bad) {
			t.Errorf("Write failed with %v, want the mismatch", werr)
		}
		if v.Verified() != bad {
			t.Errorf("Verified() = %d, want the %d chunks before the bad one", v.Verified(), bad)
		}
		if _, err := v.Write([]byte{0}); !errors.Is(err, ErrClosed) {
			t.Errorf("Write after Close = %v", err)
		}
	}
}

// TestVerifierWriteFailsFast checks that Write refuses bytes once the
// hasher found a bad chunk, so a receiver stops reading a bad source.
func TestVerifierWriteFailsFast(t *testing.T) {
	data := randomBytes(8<<20, 10)
	refs := []Ref{{Len: 1 << 20}, {Len: 7 << 20, Sum: Hash(data[1<<20:])}} // chunk 0 wrong
	v := NewVerifier(refs)
	defer v.Close()
	deadline := time.Now().Add(10 * time.Second)
	for off := 0; ; off += 4096 {
		if off == len(data) {
			t.Fatal("all bytes taken after a bad first chunk")
		}
		if _, err := v.Write(data[off : off+4096]); err != nil {
			if !isMismatch(err, 0) {
				t.Fatalf("Write = %v, want chunk 0's mismatch", err)
			}
			return
		}
		if off > 2<<20 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond) // let the hasher catch up
		}
	}
}

func TestVerifierLengthErrors(t *testing.T) {
	data := randomBytes(1<<20, 11)
	refs := refsOf(t, data, small)
	v := NewVerifier(refs)
	if _, err := v.Write(data[:len(data)-10]); err != nil {
		t.Fatal(err)
	}
	err := v.Close()
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short stream: Close = %v", err)
	}
	if v.Verified() != len(refs)-1 {
		t.Errorf("short stream: Verified() = %d, want %d", v.Verified(), len(refs)-1)
	}

	v = NewVerifier(refs)
	n, err := v.Write(append(bytes.Clone(data), "more"...))
	if !errors.Is(err, ErrTooLong) || n != len(data) {
		t.Errorf("long stream: Write = %d, %v; want %d, ErrTooLong", n, err, len(data))
	}
	if err := v.Close(); err != nil {
		t.Errorf("long stream: Close = %v; the chunks themselves were good", err)
	}
}

func TestVerifierStopsItsGoroutine(t *testing.T) {
	before := runtime.NumGoroutine()
	data := randomBytes(2<<20, 12)
	refs := refsOf(t, data, small)
	for range 20 {
		v := NewVerifier(refs)
		v.Write(data[:len(data)/2])
		v.Close()
	}
	for range 100 {
		if runtime.NumGoroutine() <= before {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("%d goroutines after closing the verifiers, %d before", runtime.NumGoroutine(), before)
}

func TestParseSum(t *testing.T) {
	s := Hash([]byte("x"))
	if got, err := ParseSum(s.String()); err != nil || got != s {
		t.Errorf("ParseSum(String()) = %v, %v", got, err)
	}
	for _, bad := range []string{"", "00", s.String()[:63] + "g", s.String() + "00"} {
		if _, err := ParseSum(bad); err == nil {
			t.Errorf("ParseSum(%q) accepted", bad)
		}
	}
}

// BenchmarkReceive measures the receive path of a 64 MiB file in 1 MiB
// pieces: each written to a file and hashed, one after the other in one
// goroutine (serial, as apply does today), or with the hash on a
// Verifier's goroutine against the whole-file hash (one chunk) or the
// chunk list. The ratios are what overlapping buys. It reports CPU time
// besides wall time; put TMPDIR on tmpfs to leave the disk out.
func BenchmarkReceive(b *testing.B) {
	data := randomBytes(64<<20, 13)
	refs := refsOf(b, data, DefaultParams())
	whole := []Ref{{Len: int64(len(data)), Sum: Hash(data)}}
	dir := b.TempDir()
	run := func(b *testing.B, w func() io.WriteCloser) {
		b.SetBytes(int64(len(data)))
		var before, after syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &before)
		for b.Loop() {
			f, err := os.Create(filepath.Join(dir, "f"))
			if err != nil {
				b.Fatal(err)
			}
			v := w()
			for p := data; len(p) > 0; p = p[1<<20:] {
				if _, err := f.Write(p[:1<<20]); err != nil {
					b.Fatal(err)
				}
				if _, err := v.Write(p[:1<<20]); err != nil {
					b.Fatal(err)
				}
			}
			if err := v.Close(); err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
		syscall.Getrusage(syscall.RUSAGE_SELF, &after)
		cpu := time.Duration(after.Utime.Nano()+after.Stime.Nano()-before.Utime.Nano()-before.Stime.Nano()) / time.Duration(b.N)
		b.ReportMetric(cpu.Seconds(), "cpu-s/op")
	}
	b.Run("serial", func(b *testing.B) {
		run(b, func() io.WriteCloser { return &serial{h: blake3.New(), want: whole[0].Sum} })
	})
	b.Run("verifier-whole", func(b *testing.B) {
		run(b, func() io.WriteCloser { return NewVerifier(whole) })
	})
	b.Run("verifier-chunks", func(b *testing.B) {
		run(b, func() io.WriteCloser { return NewVerifier(refs) })
	})
}

// serial hashes in Write, as apply's sink does.
type serial struct {
	h    *blake3.Hasher
	want Sum
}

func (s *serial) Write(p []byte) (int, error) { return s.h.Write(p) }

func (s *serial) Close() error {
	if Sum(s.h.Sum(nil)) != s.want {
		return errors.New("mismatch")
	}
	return nil
}
