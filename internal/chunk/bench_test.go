package chunk

import (
	"bytes"
	"io"
	"testing"
)

// candidates are the parameter sets the default was chosen from (see
// TestMeasureChunking in internal/manifest and the package documentation).
var candidates = []Params{
	{Min: 16 << 10, Avg: 64 << 10, Max: 256 << 10},
	{Min: 64 << 10, Avg: 256 << 10, Max: 1 << 20},
	{Min: 128 << 10, Avg: 512 << 10, Max: 2 << 20},
	{Min: 256 << 10, Avg: 1 << 20, Max: 4 << 20},
	{Min: 1 << 20, Avg: 4 << 20, Max: 16 << 20},
}

// BenchmarkChunk measures cutting 64 MiB of random bytes held in memory
// into chunks (no hashing), with each candidate parameter set.
func BenchmarkChunk(b *testing.B) {
	data := randomBytes(64<<20, 7)
	for _, p := range candidates {
		b.Run(p.String(), func(b *testing.B) {
			r := bytes.NewReader(data)
			c, err := New(r, p)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				r.Reset(data)
				c.Reset(r)
				for {
					if _, err := c.Next(); err == io.EOF {
						break
					} else if err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
