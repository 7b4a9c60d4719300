package manifest

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/zeebo/blake3"

	"github.com/fanout/fanout/internal/chunk"
)

// tiny are chunk parameters small enough for test files of a few hundred
// KiB to have many chunks, and for 64 KiB ones to count as big (bigFile).
var tiny = chunk.Params{Min: 1 << 10, Avg: 4 << 10, Max: 16 << 10}

// randomContent returns n pseudo-random bytes.
func randomContent(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// refChunks cuts data with p and lists its chunks as a manifest does,
// computed independently of Build: the chunker and ChunkListHash.
func refChunks(t *testing.T, data []byte, p chunk.Params) (string, []Chunk) {
	t.Helper()
	c, err := chunk.New(bytes.NewReader(data), p)
	if err != nil {
		t.Fatal(err)
	}
	var cs []Chunk
	for {
		ch, err := c.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, Chunk{Off: ch.Off, Len: int64(ch.Len()), Hash: chunk.Hash(ch.Data).String()})
	}
	if len(cs) <= 1 {
		return chunk.Hash(data).String(), nil
	}
	h, err := ChunkListHash(cs)
	if err != nil {
		t.Fatal(err)
	}
	return h, cs
}

// chunkTree writes files of the given sizes (random content) under a new
// directory, with mtimes an hour old so that the cache keeps them.
// sizes3 has a file of each kind format 3 tells apart: empty, shorter than
// the minimum chunk, one chunk longer than the minimum, several chunks,
// and big enough for the chunk hashers (bigFile).
// TestBuildFormat3OlderFormats checks that a format 3 build with WholeHash
// gives, for formats 2 and 1, the very bytes a format 2 build gives: a
// master can publish to older minions from the build it made for newer
// ones.
// decodeV2 decodes b as a minion of format 2 does: unknown fields are
// refused.
// TestBuildParallelMatchesSerial checks that results land in tree order
// whatever the number of cores and the order files finish in.
func TestDecodeFormat3RejectsEachRule(t *testing.T) {
	data := randomContent(40<<10, 3)
	hash, cs := refChunks(t, data, tiny)
	if len(cs) < 4 {
		t.Fatalf("test data has %d chunks", len(cs))
	}
	base := func() *Manifest {
		p := tiny
		return &Manifest{Chunking: &p, Entries: []Entry{
			{Path: ".", Type: Dir, Mode: 0o755, MTime: 1},
			{Path: "f", Type: File, Mode: 0o644, Size: int64(len(data)), MTime: 2, Hash: hash, Chunks: slices.Clone(cs)},
			{Path: "g", Type: File, Mode: 0o644, Size: 10, MTime: 2, Hash: strings.Repeat("0f", 32)},
			{Path: "l", Type: Symlink, Mode: 0o777, MTime: 3, Target: "f"},
		}}
	}
	tests := []struct {
		name   string
		mutate func(m *Manifest)
		want   string
	}{
		{"chunks without chunking", func(m *Manifest) { m.Chunking = nil }, "without chunking"},
		{"bad chunking", func(m *Manifest) { m.Chunking.Avg = 3000 }, "chunking"},
		{"one chunk listed", func(m *Manifest) {
			e := &m.Entries[2]
			e.Chunks = []Chunk{{Off: 0, Len: 10, Hash: e.Hash}}
		}, "one chunk"},
		{"gap", func(m *Manifest) { m.Entries[1].Chunks[1].Off++ }, "offset"},
		{"overlap", func(m *Manifest) { m.Entries[1].Chunks[2].Off-- }, "offset"},
		{"short of the size", func(m *Manifest) { m.Entries[1].Size++ }, "not at the size"},
		{"past the size", func(m *Manifest) { m.Entries[1].Size-- }, "size"},
		{"chunk too long", func(m *Manifest) {
			cs := m.Entries[1].Chunks
			cs[0].Len += int64(tiny.Max)
			for i := 1; i < len(cs); i++ {
				cs[i].Off += int64(tiny.Max)
			}
			m.Entries[1].Size += int64(tiny.Max)
		}, "outside 1.."},
		{"chunk too short", func(m *Manifest) {
			cs := m.Entries[1].Chunks
			cs[1].Off, cs[1].Len = 10, cs[1].Len+cs[0].Len-10
			cs[0].Len = 10
		}, "minimum"},
		{"empty chunk", func(m *Manifest) { m.Entries[1].Chunks[0].Len = 0 }, "outside 1.."},
		{"uppercase chunk hash", func(m *Manifest) { m.Entries[1].Chunks[0].Hash = strings.ToUpper(cs[0].Hash) }, "lowercase"},
		{"chunk hash not hex", func(m *Manifest) { m.Entries[1].Chunks[0].Hash = strings.Repeat("g", 64) }, "hex"},
		{"hash not of the list", func(m *Manifest) { m.Entries[1].Hash = strings.Repeat("0f", 32) }, "chunk list"},
		{"chunk swapped", func(m *Manifest) {
			c := m.Entries[1].Chunks
			c[0].Hash, c[1].Hash = c[1].Hash, c[0].Hash
		}, "chunk list"},
		{"one chunk longer than max", func(m *Manifest) { m.Entries[2].Size = int64(tiny.Max) + 1 }, "maximum"},
		{"symlink with chunks", func(m *Manifest) { m.Entries[3].Chunks = cs[:2] }, "symlink with chunks"},
		{"too many chunks", func(m *Manifest) {}, "limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := base()
			lim := DefaultLimits()
			if err := m.Validate(lim); err != nil {
				t.Fatalf("unmutated manifest invalid: %v", err)
			}
			if tt.name == "too many chunks" {
				lim.MaxChunks = len(cs) - 1
			}
			tt.mutate(m)
			b, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Decode(b, lim); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Decode = %v, want an error containing %q", err, tt.want)
			}
			if err := m.Validate(lim); err == nil {
				t.Error("Validate accepted it")
			}
		})
	}
}

func TestChunkListHash(t *testing.T) {
	a := Chunk{Off: 0, Len: 3, Hash: chunk.Hash([]byte("abc")).String()}
	b := Chunk{Off: 3, Len: 2, Hash: chunk.Hash([]byte("de")).String()}
	h, err := ChunkListHash([]Chunk{a, b})
	if err != nil {
		t.Fatal(err)
	}
	// The definition, as its documentation states it, and pinned: it is
	// part of format 3.
	var key [32]byte
	blake3.DeriveKey("fanout 2026-11-28 manifest format 3 chunk list v1", nil, key[:])
	kh, err := blake3.NewKeyed(key[:])
	if err != nil {
		t.Fatal(err)
	}
	kh.Write([]byte{3, 0, 0, 0, 0, 0, 0, 0})
	sa := chunk.Hash([]byte("abc"))
	kh.Write(sa[:])
	kh.Write([]byte{2, 0, 0, 0, 0, 0, 0, 0})
	sd := chunk.Hash([]byte("de"))
	kh.Write(sd[:])
	if want := hex.EncodeToString(kh.Sum(nil)); h != want {
		t.Errorf("ChunkListHash = %s, the definition gives %s", h, want)
	}
	if want := "84165cd7fb70d8aee5d7402fbebd2cac764e49c4dae8e1238e08916aaf6fd691"; h != want {
		t.Errorf("ChunkListHash = %s, want %s", h, want)
	}
	for _, other := range [][]Chunk{{b, a}, {a, {Off: 3, Len: 3, Hash: b.Hash}}, {a}} {
		if h2, _ := ChunkListHash(other); h2 == h {
			t.Errorf("%v hashes like %v", other, []Chunk{a, b})
		}
	}
	if h == chunk.Hash([]byte("abcde")).String() {
		t.Error("a chunk list hash equals the content hash")
	}
	if _, err := ChunkListHash([]Chunk{{Len: 1, Hash: "x"}}); err == nil {
		t.Error("a chunk hash that is not hex was hashed")
	}
}

func TestChunkedManifestSeedIsValid(t *testing.T) {
	m := chunkedManifest()
	if err := m.Validate(DefaultLimits()); err != nil || len(m.Entries[1].Chunks) < 3 {
		t.Fatalf("fuzz seed: %d chunks, %v", len(m.Entries[1].Chunks), err)
	}
}
