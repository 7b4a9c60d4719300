package peer

import (
	"context"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/fanout/fanout/internal/bwlimit"
	"github.com/fanout/fanout/internal/chunk"
	"github.com/fanout/fanout/internal/manifest"
)

// BenchmarkFetchChunks moves a 16 MiB file of 512 KiB chunks from a real
// server to a client over loopback, as a format 3 pull does (runs of 4
// MiB), with and without compression, for text-like data (generated log
// lines) and random data, on an unlimited link and on links of 16 and 4 MiB/s
// (the server's upload limit, which counts the bytes on the wire).
// MB/s is chunk bytes delivered (decompressed, as the verifier sees them);
// wire/raw is the bytes on the wire per chunk byte.
//
//	go test -run '^$' -bench BenchmarkFetchChunks -benchtime 8x ./internal/peer/
func BenchmarkFetchChunks(b *testing.B) {
	const size, chunkLen, run = 16 << 20, 512 << 10, 4 << 20
	data := map[string][]byte{"text": textLike(size, 31), "random": randomData(size, 32)}
	for _, kind := range []string{"text", "random"} {
		for _, link := range []int64{0, 16 << 20, 4 << 20} {
			for _, compress := range []bool{false, true} {
				name := fmt.Sprintf("%s/link=%s/compress=%v", kind, linkName(link), compress)
				b.Run(name, func(b *testing.B) {
					content := data[kind]
					var chunks []manifest.Chunk
					for off := 0; off < size; off += chunkLen {
						chunks = append(chunks, manifest.Chunk{Off: int64(off), Len: chunkLen, Hash: chunk.Hash(content[off : off+chunkLen]).String()})
					}
					e := manifest.Entry{Path: "big", Type: manifest.File, Mode: 0o644, Size: size, Chunks: chunks}
					dir := b.TempDir()
					m := &manifest.Manifest{Entries: []manifest.Entry{{Path: ".", Type: manifest.Dir, Mode: 0o755}, e}}
					mustWriteB(b, filepath.Join(dir, "big"), content)
					env := startPeerB(b, &Snapshot{Gen: 1, Manifest: m, Root: dir}, ServerConfig{Upload: bwlimit.New(link)})
					perRun := run / chunkLen
					lens := make([]int64, perRun)
					for i := range lens {
						lens[i] = chunkLen
					}
					var wire int64
					b.SetBytes(size)
					b.ResetTimer()
					for range b.N {
						for off := int64(0); off < size; off += run {
							got, err := env.client.FetchChunks(context.Background(), env.addr, 1, "big", off, lens, ChunkOptions{Compress: compress}, io.Discard)
							if err != nil {
								b.Fatal(err)
							}
							wire += got.Wire
						}
					}
					b.ReportMetric(float64(wire)/float64(int64(b.N)*size), "wire/raw")
				})
			}
		}
	}
}

func linkName(rate int64) string {
	if rate == 0 {
		return "loopback"
	}
	return fmt.Sprintf("%dMiBps", rate>>20)
}

// startPeerB is startPeerWith for a benchmark.
func startPeerB(b *testing.B, snap *Snapshot, cfg ServerConfig) *peerEnv {
	b.Helper()
	cfg.Secrets = [][]byte{testSecret}
	s := NewServer(cfg)
	s.Set(snap)
	hs := httptest.NewServer(s)
	b.Cleanup(hs.Close)
	c := NewClient(ClientConfig{Secrets: [][]byte{testSecret}})
	b.Cleanup(c.CloseIdleConnections)
	return &peerEnv{server: s, http: hs, addr: hs.Listener.Addr().String(), client: c}
}

func mustWriteB(b *testing.B, p string, data []byte) {
	b.Helper()
	if err := os.WriteFile(p, data, 0o644); err != nil {
		b.Fatal(err)
	}
}
