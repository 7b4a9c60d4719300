package manifest

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"

	"github.com/zeebo/blake3"

	"github.com/fanout/fanout/internal/chunk"
)

// chunkListContext is the BLAKE3 key derivation context of the key chunk
// lists are hashed with (see ChunkListHash). It is part of format 3.
const chunkListContext = "fanout 2026-11-28 manifest format 3 chunk list v1"

// ChunkListHash returns the Hash a format 3 manifest gives a file of two or
// more chunks: BLAKE3-256 in keyed mode over each chunk in order, as its
// length in 8 bytes little-endian followed by its 32-byte hash. The key is
// BLAKE3's derive_key of the context string
// "fanout 2026-11-28 manifest format 3 chunk list v1" with empty key
// material, so a chunk list hash can never equal the BLAKE3 of a file's
// content, the Hash of a file of one chunk. Offsets are not hashed: with
// the lengths in order they are implied.
func ChunkListHash(chunks []Chunk) (string, error) {
	l := newListHasher()
	for i, c := range chunks {
		sum, err := chunk.ParseSum(c.Hash)
		if err != nil {
			return "", fmt.Errorf("chunk %d: %w", i, err)
		}
		l.add(c.Len, sum)
	}
	return l.sum(), nil
}

// listHasher computes ChunkListHash a chunk at a time.
type listHasher struct {
	h   *blake3.Hasher
	rec [8 + len(chunk.Sum{})]byte
}

func newListHasher() *listHasher {
	var key [32]byte
	blake3.DeriveKey(chunkListContext, nil, key[:])
	h, err := blake3.NewKeyed(key[:])
	if err != nil {
		panic(err) // a key of 32 bytes is never refused
	}
	return &listHasher{h: h}
}

func (l *listHasher) add(n int64, sum chunk.Sum) {
	binary.LittleEndian.PutUint64(l.rec[:8], uint64(n))
	copy(l.rec[8:], sum[:])
	l.h.Write(l.rec[:])
}

func (l *listHasher) sum() string { return hex.EncodeToString(l.h.Sum(nil)) }

// fileHash is what hashing a file's content gives, in one format.
type fileHash struct {
	// hash is the file's Hash: the BLAKE3 of its content in formats 1 and
	// 2, its format 3 Hash when chunks were cut.
	hash string
	// chunks is the chunk list of a file of two or more chunks (format 3).
	chunks []Chunk
	// whole is the format 2 hash of such a file, when it was computed.
	whole string
}

// chunked returns the fileHash of a file made of the chunks with lengths
// lens and sums sums (at least one), with whole its format 2 hash if known.
func chunked(lens []int64, sums []chunk.Sum, whole string) fileHash {
	if len(sums) == 1 {
		h := sums[0].String()
		return fileHash{hash: h}
	}
	l := newListHasher()
	cs := make([]Chunk, len(sums))
	var off int64
	for i, s := range sums {
		cs[i] = Chunk{Off: off, Len: lens[i], Hash: s.String()}
		off += lens[i]
		l.add(lens[i], s)
	}
	return fileHash{hash: l.sum(), chunks: cs, whole: whole}
}
