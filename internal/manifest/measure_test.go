package manifest

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/fanout/fanout/internal/chunk"
)

// The measurements behind the chunk sizes (docs/PERFORMANCE.md, "Chunk
// sizes"). They assert nothing about speed and are skipped with -short and
// under the race detector. By default they cut a 64 MiB file and try 30
// places, a few seconds; the figures in docs/PERFORMANCE.md come from
//
//	MEASURE_MIB=1024 MEASURE_PLACES=300 go test -run Measure -v ./internal/manifest/
//
// (about a minute): MEASURE_MIB sets the size of the random file,
// MEASURE_PLACES the number of random places edited.

// candidates are the chunk parameter sets the default was chosen from.
var candidates = []chunk.Params{
	{Min: 16 << 10, Avg: 64 << 10, Max: 256 << 10},
	{Min: 32 << 10, Avg: 128 << 10, Max: 512 << 10},
	{Min: 64 << 10, Avg: 256 << 10, Max: 1 << 20},
	{Min: 128 << 10, Avg: 512 << 10, Max: 2 << 20},
	{Min: 256 << 10, Avg: 1 << 20, Max: 4 << 20},
	{Min: 1 << 20, Avg: 4 << 20, Max: 16 << 20},
}

func skipMeasure(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("a measurement: not with -short or -race")
	}
}

// measured is one file cut into chunks.
type measured struct {
	ends []int64 // chunk ends, in order
	sums []chunk.Sum
}

func (m *measured) chunks() []Chunk {
	cs := make([]Chunk, len(m.sums))
	var off int64
	for i, s := range m.sums {
		cs[i] = Chunk{Off: off, Len: m.ends[i] - off, Hash: s.String()}
		off = m.ends[i]
	}
	return cs
}

// cutAndHash cuts r with p and hashes each chunk, from offset base.
func cutAndHash(t *testing.T, r io.Reader, p chunk.Params, base int64, each func(end int64, sum chunk.Sum) bool) {
	t.Helper()
	c, err := chunk.New(r, p)
	if err != nil {
		t.Fatal(err)
	}
	h := blake3.New()
	for {
		ch, err := c.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if !each(base+ch.Off+int64(ch.Len()), sum256(h, ch.Data)) {
			return
		}
	}
}

// moved returns the bytes, and chunks, of the file old with ins put in
// place of del bytes at at, that a host holding old lacks: the chunks
// whose hash old has none of. Only the chunks from the last cut of old at
// or before at to the first cut where both files are cut again at the
// same content are cut and hashed; the others are the same.
func moved(t *testing.T, old []byte, m *measured, p chunk.Params, at int, ins []byte, del int) (lacked int64, chunks int) {
	have := make(map[chunk.Sum]bool, len(m.sums))
	for _, s := range m.sums {
		have[s] = true
	}
	// Cuts of old, as a set, and the last at or before at.
	isCut := make(map[int64]bool, len(m.ends))
	var start int64
	for _, e := range m.ends {
		isCut[e] = true
		if e <= int64(at) {
			start = e
		}
	}
	shift := int64(len(ins) - del)
	r := io.MultiReader(bytes.NewReader(old[start:at]), bytes.NewReader(ins), bytes.NewReader(old[at+del:]))
	prev := start
	cutAndHash(t, r, p, start, func(end int64, sum chunk.Sum) bool {
		if !have[sum] {
			lacked += end - prev
			chunks++
		}
		prev = end
		// Past the edit and cut where old was: the rest is old's.
		return !(end >= int64(at+len(ins)) && isCut[end-shift])
	})
	return lacked, chunks
}

// envInt returns the positive integer in the environment variable name, or
// def.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// TestMeasureChunking cuts a random file with each candidate parameter set
// and reports speed, the manifest and cache sizes of its chunk list, and
// the bytes a host lacks after 1 MiB is inserted into the file, or one
// byte changed: in the middle, and at random places (mean, 99th
// percentile, worst, and how often more than 8 MiB).
func TestMeasureChunking(t *testing.T) {
	skipMeasure(t)
	size := envInt("MEASURE_MIB", 64) << 20
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{9}).Read(data)
	ins := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{10}).Read(ins)
	r := rand.New(rand.NewPCG(1, 1))
	places := []int{size / 2}
	for range envInt("MEASURE_PLACES", 30) {
		places = append(places, r.IntN(size))
	}
	const gib = 1 << 30
	model := 50e9 / gib // a 50 GB file, in GiB
	t.Logf("file: %d MiB of random bytes; places: the middle and %d random", size>>20, len(places)-1)
	t.Logf("| min/avg/max | cut MB/s | cut+hash MB/s | chunks/GiB | mean chunk | manifest/GiB | 50 GB file | cache/GiB | 1 MiB inserted: middle, mean, p99, max, > 8 MiB | 1 byte changed: middle, mean, p99, max |")
	t.Logf("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
	for _, p := range candidates {
		// Cutting alone.
		start := time.Now()
		c, _ := chunk.New(bytes.NewReader(data), p)
		for {
			if _, err := c.Next(); err != nil {
				break
			}
		}
		cut := time.Since(start)
		// Cutting and hashing, one core.
		var m measured
		start = time.Now()
		cutAndHash(t, bytes.NewReader(data), p, 0, func(end int64, sum chunk.Sum) bool {
			m.ends = append(m.ends, end)
			m.sums = append(m.sums, sum)
			return true
		})
		hashed := time.Since(start)
		perGiB := float64(gib) / float64(size)
		enc, err := json.Marshal(m.chunks())
		if err != nil {
			t.Fatal(err)
		}
		manifestPerGiB := float64(len(enc)) * perGiB
		cachePerGiB := float64(len(mustPack(t, m.chunks()))) * perGiB
		var ins1, byte1 []float64
		for _, at := range places {
			b, _ := moved(t, data, &m, p, at, ins, 0)
			ins1 = append(ins1, float64(b))
			flip := []byte{data[at] ^ 0xff}
			b, _ = moved(t, data, &m, p, at, flip, 1)
			byte1 = append(byte1, float64(b))
		}
		over := 0
		for _, b := range ins1 {
			if b > 8<<20 {
				over++
			}
		}
		t.Logf("| %s/%s/%s | %.0f | %.0f | %.0f | %s | %s | %s | %s | %s, %s, %s, %s, %d%% | %s, %s, %s, %s |",
			iec(int64(p.Min)), iec(int64(p.Avg)), iec(int64(p.Max)),
			float64(size)/cut.Seconds()/1e6, float64(size)/hashed.Seconds()/1e6,
			float64(len(m.sums))*perGiB, iec(int64(size/len(m.sums))),
			iec(int64(manifestPerGiB)), iec(int64(manifestPerGiB*model)), iec(int64(cachePerGiB)),
			iec(int64(ins1[0])), iec(int64(mean(ins1[1:]))), iec(int64(p99(ins1[1:]))), iec(int64(slices.Max(ins1))), 100*over/len(ins1),
			iec(int64(byte1[0])), iec(int64(mean(byte1[1:]))), iec(int64(p99(byte1[1:]))), iec(int64(slices.Max(byte1))))
		if p == chunk.DefaultParams() {
			logEncodings(t, m.chunks(), perGiB, model)
			logCacheOfFile(t, p, m.chunks(), size)
		}
	}
}

// logEncodings compares the JSON chunk list with two more compact forms it
// could have had: objects without the offset (it is implied), and the list
// packed as the cache keeps it, in base64.
func logEncodings(t *testing.T, cs []Chunk, perGiB, model float64) {
	full, _ := json.Marshal(cs)
	type noOff struct {
		Len  int64  `json:"len"`
		Hash string `json:"hash"`
	}
	var short []noOff
	for _, c := range cs {
		short = append(short, noOff{c.Len, c.Hash})
	}
	noOffs, _ := json.Marshal(short)
	packed, _ := json.Marshal(base64.StdEncoding.EncodeToString(mustPack(t, cs)))
	for _, e := range []struct {
		name string
		n    int
	}{{"JSON objects (format 3)", len(full)}, {"JSON objects without off", len(noOffs)}, {"one base64 string, packed", len(packed)}} {
		t.Logf("default sizes, chunk list as %s: %d bytes a chunk, %s/GiB, %s for a 50 GB file",
			e.name, e.n/len(cs), iec(int64(float64(e.n)*perGiB)), iec(int64(float64(e.n)*perGiB*model)))
	}
}

// logCacheOfFile reports the saved cache of one file of size bytes whose
// chunk list is cs, with and without its whole-content hash.
func logCacheOfFile(t *testing.T, p chunk.Params, cs []Chunk, size int) {
	h, err := ChunkListHash(cs)
	if err != nil {
		t.Fatal(err)
	}
	for _, whole := range []string{"", strings.Repeat("ab", 32)} {
		c := NewCache()
		c.put("/data/models/m42/weights.bin", fakeInfo{int64(size), 1}, &p, fileHash{hash: h, chunks: cs, whole: whole})
		n := savedSize(t, c)
		t.Logf("default sizes, cache of one %d MiB file of %d chunks (whole-content hash %v): %s", size>>20, len(cs), whole != "", iec(int64(n)))
	}
}

// TestMeasureManifestSizes reports the encoded manifest and the saved hash
// cache of a tree of 100,000 small files (1–8 KiB, 1,000 to a directory, as
// make bench's tree) in formats 1, 2 and 3.
func TestMeasureManifestSizes(t *testing.T) {
	skipMeasure(t)
	const files = 100_000
	r := rand.New(rand.NewPCG(4, 2))
	p := chunk.DefaultParams()
	m := &Manifest{Entries: []Entry{{Path: ".", Type: Dir, Mode: 0o755, MTime: 1_700_000_000_123_456_789}}}
	owner := func(e Entry) Entry {
		e.User, e.Group, e.UID, e.GID = "root", "root", NewOwnerID(0), NewOwnerID(0)
		return e
	}
	c2, c3 := NewCache(), NewCache()
	for i := range files {
		if i%1000 == 0 {
			m.Entries = append(m.Entries, owner(Entry{Path: fmt.Sprintf("d%03d", i/1000), Type: Dir, Mode: 0o755, MTime: 1_700_000_000_123_456_789}))
		}
		var sum chunk.Sum
		binary.LittleEndian.PutUint64(sum[:], r.Uint64())
		binary.LittleEndian.PutUint64(sum[8:], r.Uint64())
		binary.LittleEndian.PutUint64(sum[16:], r.Uint64())
		size := int64(1<<10 + r.IntN(7<<10+1))
		e := owner(Entry{Path: fmt.Sprintf("d%03d/f%06d.bin", i/1000, i), Type: File, Mode: 0o644, Size: size,
			MTime: 1_700_000_000_123_456_789 + int64(i), Hash: sum.String()})
		m.Entries = append(m.Entries, e)
		osPath := "/data/tree/" + e.Path
		c2.put(osPath, fakeInfo{size, uint64(i)}, nil, fileHash{hash: e.Hash})
		c3.put(osPath, fakeInfo{size, uint64(i)}, &p, fileHash{hash: e.Hash})
	}
	enc2, err := m.EncodeFormat(Format2)
	if err != nil {
		t.Fatal(err)
	}
	enc1, _ := m.EncodeFormat(Format1)
	m.Chunking = &p
	enc3, err := m.EncodeFormat(Format3)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []struct {
		f int
		n int
	}{{1, len(enc1)}, {2, len(enc2)}, {3, len(enc3)}} {
		t.Logf("%d small files, manifest format %d: %d bytes (%.1f a file)", files, e.f, e.n, float64(e.n)/files)
	}
	s2, s3 := savedSize(t, c2), savedSize(t, c3)
	t.Logf("%d small files, hash cache: %d bytes hashed for format 2, %d for format 3 (%.1f a file)", files, s2, s3, float64(s3)/files)
}

func mustPack(t *testing.T, cs []Chunk) []byte {
	b, err := packChunks(cs)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func savedSize(t *testing.T, c *Cache) int {
	p := filepath.Join(t.TempDir(), "cache")
	if err := c.Save(p); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return int(fi.Size())
}

// fakeInfo is a FileInfo of a settled file, for the cache.
type fakeInfo struct {
	size int64
	ino  uint64
}

func (f fakeInfo) Name() string       { return "f" }
func (f fakeInfo) Size() int64        { return f.size }
func (f fakeInfo) Mode() fs.FileMode  { return 0o644 }
func (f fakeInfo) ModTime() time.Time { return time.Unix(1_700_000_000, 123_456_789) }
func (f fakeInfo) IsDir() bool        { return false }
func (f fakeInfo) Sys() any {
	return &syscall.Stat_t{Ino: f.ino, Ctim: syscall.Timespec{Sec: 1_700_000_000, Nsec: 987_654_321}}
}

// p99 returns the 99th percentile of xs (nearest rank).
func p99(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	return s[(len(s)*99+99)/100-1]
}

func mean(xs []float64) float64 {
	s := 0.0
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

// iec formats n bytes in binary units.
func iec(n int64) string {
	switch {
	case n >= 10<<30:
		return fmt.Sprintf("%.0f GiB", float64(n)/(1<<30))
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 10<<20:
		return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20))
	case n >= 1<<20:
		return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20))
	case n >= 10<<10:
		return fmt.Sprintf("%.0f KiB", float64(n)/(1<<10))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
