package chunk

import (
	"bytes"
	"slices"
	"testing"
	"testing/iotest"
)

// FuzzChunk checks that cut points are deterministic (the same whatever the
// reads return, and the same as the obvious slow algorithm), that chunks
// cover the input exactly, and that every chunk but the last is within
// min..max and the last within 1..max.
func FuzzChunk(f *testing.F) {
	f.Add([]byte{}, uint8(0), uint16(0))
	f.Add(bytes.Repeat([]byte{0}, 1100), uint8(0), uint16(0))
	f.Add(randomBytes(1500, 1), uint8(1), uint16(100))
	f.Add(randomBytes(1200, 2), uint8(2), uint16(3))
	f.Fuzz(func(t *testing.T, data []byte, shape uint8, extra uint16) {
		// The smallest parameters Validate allows, so that fuzz inputs
		// span many chunks: avg 256 to 2048, min from MinSize to avg, max
		// two to five times avg.
		avg := 256 << (shape % 4)
		p := Params{Min: MinSize + int(extra)%(avg-MinSize+1), Avg: avg, Max: avg * (2 + int(shape/4)%4)}
		if err := p.Validate(); err != nil {
			t.Fatal(err)
		}
		want := lengths(t, bytes.NewReader(data), p)
		// The reference hashes 64 bytes a position: slow under the fuzzer's
		// instrumentation, and slower still when it minimizes a large input.
		if len(data) <= 2<<10 {
			if ref := referenceLengths(data, p); !slices.Equal(want, ref) {
				t.Fatalf("%v: cuts %v, reference %v", p, want, ref)
			}
		}
		if got := lengths(t, iotest.OneByteReader(bytes.NewReader(data)), p); !slices.Equal(got, want) {
			t.Fatalf("%v: one-byte reads cut %v, want %v", p, got, want)
		}
		if got := cutterLengths(t, data, p); !slices.Equal(got, want) {
			t.Fatalf("%v: a Cutter over the whole input cuts %v, want %v", p, got, want)
		}
		total := 0
		for i, l := range want {
			total += l
			if l < 1 || l > p.Max || (i < len(want)-1 && l < p.Min) {
				t.Fatalf("%v: chunk %d of %d has length %d", p, i, len(want), l)
			}
		}
		if total != len(data) {
			t.Fatalf("%v: chunks cover %d of %d bytes", p, total, len(data))
		}
	})
}
