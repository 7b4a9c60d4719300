package manifest

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/fanout/fanout/internal/chunk"
)

// segmentContents are files for segmented cutting: random bytes, zeros
// (no content-defined cut point: every cut at Max), and random bytes with
// a run of zeros across the middle, where segments meet.
func segmentContents(n int) map[string][]byte {
	zeros := make([]byte, n)
	mixed := randomContent(n, 11)
	clear(mixed[n/2-3*int(tiny.Max) : n/2+5*int(tiny.Max)+77])
	return map[string][]byte{"random": randomContent(n, 10), "zeros": zeros, "mixed": mixed}
}

// TestBuildSegments checks that a big file cut by several readers at once
// gets the chunks one reader cutting it from its start gives.
func TestBuildSegments(t *testing.T) {
	// With tiny chunks a segment is 2 MiB; 4 cores cut 9 MiB in 4.
	// One file a build, so it has every reader token: 4, 3 and 2
	// segments, whose starts fall in the zero run of "mixed" with 2 and 4.
	n := 4*int(segmentSize(&tiny)) + 999_999
	for name, data := range segmentContents(n) {
		path := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		wantHash, wantChunks := refChunks(t, data, tiny)
		for _, procs := range []int{4, 3, 2} {
			p := tiny
			m := withProcs(t, procs, func() *Manifest {
				m, err := Build(context.Background(), path, Options{Hash: true, Chunking: &p})
				if err != nil {
					t.Fatal(err)
				}
				return m
			})
			if e := m.Entries[0]; e.Hash != wantHash || !slices.Equal(e.Chunks, wantChunks) {
				t.Errorf("GOMAXPROCS %d, %s: hash %.12s, %d chunks; want %.12s, %d chunks", procs, name, e.Hash, len(e.Chunks), wantHash, len(wantChunks))
			}
		}
	}
}

// TestStitch joins cuts made from arbitrary segment starts, those of
// Build's and others: segments shorter than a chunk, which the cuts
// carried over pass whole, and starts that are no multiple of Max.
func TestStitch(t *testing.T) {
	const n = 600 << 10
	path := filepath.Join(t.TempDir(), "f")
	w := newHashWorker(context.Background(), &tiny, false)
	r := rand.New(rand.NewPCG(3, 4))
	for name, data := range segmentContents(n) {
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		_, want := refChunks(t, data, tiny)
		for try := range 40 {
			starts := []int64{0}
			for range try % 7 {
				starts = append(starts, r.Int64N(n))
			}
			if try%5 == 4 { // a segment shorter than any chunk
				s := r.Int64N(n - 100)
				starts = append(starts, s, s+int64(r.IntN(100)+1))
			}
			slices.Sort(starts)
			starts = slices.Compact(starts)
			segs := make([]*bigResult, len(starts))
			for k, s := range starts {
				stop := int64(n)
				if k+1 < len(starts) {
					stop = starts[k+1]
				}
				segs[k] = cutFrom(data, s, stop)
			}
			lens, sums, err := stitch(w, f, n, &tiny, segs)
			if err != nil {
				t.Fatal(err)
			}
			var off int64
			var got []Chunk
			for i := range lens {
				got = append(got, Chunk{Off: off, Len: lens[i], Hash: sums[i].String()})
				off += lens[i]
			}
			if !slices.Equal(got, want) {
				t.Fatalf("%s, segments from %v: %d chunks, want %d", name, starts, len(got), len(want))
			}
		}
		f.Close()
	}
}

// cutFrom cuts data from start as cutSegment does: until a chunk ends at
// or past stop.
func cutFrom(data []byte, start, stop int64) *bigResult {
	c, _ := chunk.NewCutter(tiny)
	r := &bigResult{start: start}
	for pos := start; pos < stop; {
		end := min(pos+int64(tiny.Max), int64(len(data)))
		k := int64(c.Cut(data[pos:end]))
		r.lens = append(r.lens, k)
		r.sums = append(r.sums, chunk.Hash(data[pos:pos+k]))
		pos += k
	}
	return r
}
