package chunk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"testing"
	"testing/iotest"

	"github.com/zeebo/blake3"
)

// randomBytes returns n bytes of a fixed pseudo-random stream.
func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

// small is a set of parameters small enough for tests to see many chunks.
var small = Params{Min: 256, Avg: 1024, Max: 4096}

// lengths returns the chunk lengths of r cut with p, checking offsets.
func lengths(t testing.TB, r io.Reader, p Params) []int {
	t.Helper()
	c, err := New(r, p)
	if err != nil {
		t.Fatal(err)
	}
	var ls []int
	var off int64
	for {
		ch, err := c.Next()
		if err == io.EOF {
			return ls
		}
		if err != nil {
			t.Fatal(err)
		}
		if ch.Off != off {
			t.Fatalf("chunk %d at offset %d, want %d", len(ls), ch.Off, off)
		}
		off += int64(ch.Len())
		ls = append(ls, ch.Len())
	}
}

// referenceLengths cuts data the slow, obvious way: the hash at a position
// is computed afresh from the 64 bytes ending there, as the sum of
// gear[b]<<age, and compared with the mask of the region the position is
// in.
func referenceLengths(data []byte, p Params) []int {
	b := 0
	for 1<<b < p.Avg {
		b++
	}
	maskS, maskL := ^uint64(0)<<(64-(b+2))>>3, ^uint64(0)<<(64-(b-2))>>3
	var ls []int
	for start := 0; start < len(data); {
		rest := data[start:]
		n := min(len(rest), p.Max)
		if len(rest) > p.Min {
			for l := p.Min + 1; l <= n; l++ { // chunk length l ends at rest[l-1]
				var h uint64
				for age := 0; age < 64; age++ {
					h += gear[rest[l-1-age]] << age
				}
				mask := maskL
				if l <= p.Avg {
					mask = maskS
				}
				if h&mask == 0 {
					n = l
					break
				}
			}
		}
		ls = append(ls, n)
		start += n
	}
	return ls
}

// cutterLengths cuts data held whole in memory with a Cutter.
func cutterLengths(t testing.TB, data []byte, p Params) []int {
	t.Helper()
	c, err := NewCutter(p)
	if err != nil {
		t.Fatal(err)
	}
	var ls []int
	for len(data) > 0 {
		n := c.Cut(data)
		ls = append(ls, n)
		data = data[n:]
	}
	return ls
}

func TestMatchesReference(t *testing.T) {
	for _, p := range []Params{small, {Min: 64, Avg: 256, Max: 1024}, {Min: 1024, Avg: 1024, Max: 1024}, {Min: 300, Avg: 512, Max: 5000}} {
		data := randomBytes(200_000, 1)
		got := lengths(t, bytes.NewReader(data), p)
		want := referenceLengths(data, p)
		if !slices.Equal(got, want) {
			t.Errorf("%v: %d chunks %v..., reference %d chunks %v...", p, len(got), got[:min(8, len(got))], len(want), want[:min(8, len(want))])
		}
		if got := cutterLengths(t, data, p); !slices.Equal(got, want) {
			t.Errorf("%v: a Cutter cuts otherwise than the reference", p)
		}
	}
}

// TestGolden pins the cut points of a fixed input, so that any change to
// the gear table, the masks or the loop, on any platform, is seen: chunk
// lists in manifests and caches depend on them.
func TestGolden(t *testing.T) {
	for _, tc := range []struct {
		p    Params
		size int
		want []int
	}{
		{small, 64 << 10, []int{1198, 1484, 320, 1664, 1121, 3286, 1254, 1237, 1471, 1105, 1136, 1215, 503, 1417, 1039, 1370, 540, 2099, 1025, 1323, 1506, 1076, 1291, 1189, 569, 1548, 617, 1114, 1478, 795, 1893, 1089, 1075, 1625, 1275, 1160, 312, 1095, 1095, 1571, 849, 1025, 1078, 969, 641, 1190, 1061, 1045, 756, 1187, 1459, 1057, 1305, 1078, 1656}},
		{Params{Min: 256 << 10, Avg: 1 << 20, Max: 4 << 20}, 16 << 20, []int{875214, 1189774, 1274350, 1161590, 1141068, 1121094, 1350550, 1282842, 718057, 1358137, 626297, 692735, 1142644, 1523664, 1319200}},
	} {
		h := blake3.New()
		h.Write([]byte("fanout chunk golden input"))
		data := make([]byte, tc.size)
		h.Digest().Read(data)
		if got := lengths(t, bytes.NewReader(data), tc.p); !slices.Equal(got, tc.want) {
			t.Errorf("%v: cut lengths %#v, want %#v", tc.p, got, tc.want)
		}
	}
}

func TestReadPatterns(t *testing.T) {
	data := randomBytes(1<<20, 2)
	want := lengths(t, bytes.NewReader(data), small)
	for name, r := range map[string]io.Reader{
		"one byte":  iotest.OneByteReader(bytes.NewReader(data)),
		"half":      iotest.HalfReader(bytes.NewReader(data)),
		"data+EOF":  iotest.DataErrReader(bytes.NewReader(data)),
		"multi-src": io.MultiReader(bytes.NewReader(data[:777]), bytes.NewReader(data[777:5000]), bytes.NewReader(data[5000:])),
	} {
		if got := lengths(t, r, small); !slices.Equal(got, want) {
			t.Errorf("%s: %d chunks, want %d (the same cuts as one read)", name, len(got), len(want))
		}
	}
}

func TestSizesAndCoverage(t *testing.T) {
	for _, n := range []int{0, 1, 255, 256, 257, 4096, 4097, 100_000} {
		data := randomBytes(n, uint64(n))
		ls := lengths(t, bytes.NewReader(data), small)
		total := 0
		for i, l := range ls {
			total += l
			if l > small.Max || l < 1 || (i < len(ls)-1 && l < small.Min) {
				t.Errorf("%d bytes: chunk %d of %d has length %d", n, i, len(ls), l)
			}
		}
		if total != n {
			t.Errorf("%d bytes: chunks cover %d", n, total)
		}
	}
	// Bytes without a cut point (all zero) are cut at Max.
	ls := lengths(t, bytes.NewReader(make([]byte, 10_000)), small)
	if !slices.Equal(ls, []int{4096, 4096, 1808}) {
		t.Errorf("zeros cut into %v, want cuts at max", ls)
	}
}

// TestInsertionShiftsNoLaterCut inserts bytes into a stream and checks
// that the chunks after the insertion are the same bytes as before.
func TestInsertionShiftsNoLaterCut(t *testing.T) {
	p := small
	data := randomBytes(1<<20, 3)
	at := len(data) / 2
	ins := randomBytes(3000, 4)
	changed := slices.Concat(data[:at], ins, data[at:])
	before := chunkSet(t, data, p)
	after := lengths(t, bytes.NewReader(changed), p)
	// Count the bytes of chunks not seen before: the insertion plus the
	// chunks it falls into, a few Max at most.
	var moved, off int
	for _, l := range after {
		if !before[string(changed[off:off+l])] {
			moved += l
		}
		off += l
	}
	if moved < len(ins) || moved > len(ins)+3*p.Max {
		t.Errorf("%d bytes in new chunks after inserting %d, want at most %d", moved, len(ins), len(ins)+3*p.Max)
	}
}

func chunkSet(t *testing.T, data []byte, p Params) map[string]bool {
	set := map[string]bool{}
	off := 0
	for _, l := range lengths(t, bytes.NewReader(data), p) {
		set[string(data[off:off+l])] = true
		off += l
	}
	return set
}

func TestValidate(t *testing.T) {
	if err := DefaultParams().Validate(); err != nil {
		t.Errorf("default params: %v", err)
	}
	for _, p := range []Params{
		{},
		{Min: 63, Avg: 256, Max: 1024},
		{Min: 64, Avg: 300, Max: 1024},
		{Min: 64, Avg: 128, Max: 1024},
		{Min: 512, Avg: 256, Max: 1024},
		{Min: 64, Avg: 1024, Max: 512},
		{Min: 64, Avg: 1024, Max: MaxSize + 1},
	} {
		if p.Validate() == nil {
			t.Errorf("Validate(%v) accepted", p)
		}
		if _, err := New(bytes.NewReader(nil), p); err == nil {
			t.Errorf("New with %v accepted", p)
		}
		if _, err := NewCutter(p); err == nil {
			t.Errorf("NewCutter with %v accepted", p)
		}
	}
}

func TestReadErrors(t *testing.T) {
	boom := errors.New("boom")
	data := randomBytes(20_000, 5)
	c, err := New(io.MultiReader(bytes.NewReader(data), iotest.ErrReader(boom)), small)
	if err != nil {
		t.Fatal(err)
	}
	var got []int
	for {
		ch, err := c.Next()
		if errors.Is(err, boom) {
			break
		}
		if err != nil {
			t.Fatalf("Next: %v, want the read error", err)
		}
		if ch.Off > int64(len(data)-small.Max) {
			t.Errorf("chunk at %d returned before the error, with less than max bytes after it read", ch.Off)
		}
		got = append(got, ch.Len())
	}
	if all := lengths(t, bytes.NewReader(data), small); len(got) == 0 || !slices.Equal(got, all[:len(got)]) {
		t.Errorf("chunks before the error %v, want a prefix of %v", got, all)
	}
	if _, err := c.Next(); !errors.Is(err, boom) {
		t.Errorf("Next after the error: %v", err)
	}
	c.Reset(iotest.OneByteReader(&zeroReads{}))
	if _, err := c.Next(); !errors.Is(err, io.ErrNoProgress) {
		t.Errorf("reader that returns nothing: %v", err)
	}
}

type zeroReads struct{}

func (*zeroReads) Read([]byte) (int, error) { return 0, nil }

func TestResetAndAllocs(t *testing.T) {
	data := randomBytes(4<<20, 6)
	r := bytes.NewReader(data)
	c, err := New(r, small)
	if err != nil {
		t.Fatal(err)
	}
	want := lengths(t, bytes.NewReader(data), small)
	drain := func() []int {
		var ls []int
		for {
			ch, err := c.Next()
			if err != nil {
				return ls
			}
			ls = append(ls, ch.Len())
		}
	}
	if got := drain(); !slices.Equal(got, want) {
		t.Fatal("first pass differs")
	}
	r.Reset(data)
	c.Reset(r)
	if got := drain(); !slices.Equal(got, want) {
		t.Fatal("pass after Reset differs")
	}
	allocs := testing.AllocsPerRun(5, func() {
		r.Reset(data)
		c.Reset(r)
		for {
			if _, err := c.Next(); err != nil {
				break
			}
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per pass of %d chunks, want 0", allocs, len(want))
	}
}

// TestGearTable checks gear against the procedure gengear.go documents.
func TestGearTable(t *testing.T) {
	h := blake3.New()
	h.Write([]byte("fanout chunk gear table v1"))
	raw := make([]byte, 256*8)
	h.Digest().Read(raw)
	for i := range 256 {
		if v := binary.LittleEndian.Uint64(raw[8*i:]); gear[i] != v {
			t.Fatalf("gear[%d] = %#x, the procedure gives %#x: run go generate", i, gear[i], v)
		}
	}
}
