package peer

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/chunk"
	"github.com/fanout/fanout/internal/manifest"
)

// chunkedFile is a file of the tree listed by chunks, as in a format 3
// manifest: three chunks of log lines, one of random bytes, one of text.
type chunkedFile struct {
	content []byte
	entry   manifest.Entry
}

func newChunkedFile(path string) chunkedFile {
	parts := [][]byte{textLike(200<<10, 21), textLike(300<<10, 22), textLike(150<<10, 23), randomData(256<<10, 24), textLike(140<<10, 25)}
	var content []byte
	var chunks []manifest.Chunk
	for _, p := range parts {
		chunks = append(chunks, manifest.Chunk{Off: int64(len(content)), Len: int64(len(p)), Hash: chunk.Hash(p).String()})
		content = append(content, p...)
	}
	return chunkedFile{content: content, entry: manifest.Entry{Path: path, Type: manifest.File, Mode: 0o644, Size: int64(len(content)), Chunks: chunks}}
}

// lens returns the lengths of chunks [i, k) and their offset.
func (f chunkedFile) lens(i, k int) (int64, []int64) {
	var l []int64
	for _, c := range f.entry.Chunks[i:k] {
		l = append(l, c.Len)
	}
	return f.entry.Chunks[i].Off, l
}

// chunkedPeer serves a tree holding a chunked file big.log with cfg.
func chunkedPeer(t *testing.T, cfg ServerConfig) (*peerEnv, chunkedFile) {
	t.Helper()
	f := newChunkedFile("big.log")
	tr := newTree(t, 3, f.entry)
	mustWrite(t, filepath.Join(tr.root, "big.log"), f.content)
	cfg.Secrets = [][]byte{testSecret}
	env := startPeerWith(t, tr.snap, cfg)
	if env.server.comp != nil {
		env.server.comp.maxTime = time.Hour // what compresses must not depend on the load
	}
	return env, f
}

// A client that asks for compression gets text chunks as zstd frames and
// the random one raw, fewer bytes on the wire, and exactly the chunks'
// bytes; one that does not ask gets the raw range, as before frames.
func TestFetchChunksCompressed(t *testing.T) {
	env, f := chunkedPeer(t, ServerConfig{})
	for _, r := range [][2]int{{0, 5}, {1, 3}, {3, 4}, {4, 5}} {
		off, lens := f.lens(r[0], r[1])
		end := f.entry.Chunks[r[1]-1].Off + f.entry.Chunks[r[1]-1].Len
		want := f.content[off:end]
		for _, compress := range []bool{true, false} {
			var buf bytes.Buffer
			got, err := env.client.FetchChunks(context.Background(), env.addr, 3, "big.log", off, lens, ChunkOptions{Compress: compress}, &buf)
			if err != nil {
				t.Fatalf("chunks %v compress=%v: %v", r, compress, err)
			}
			if !bytes.Equal(buf.Bytes(), want) || got.Bytes != int64(len(want)) {
				t.Fatalf("chunks %v compress=%v: %d bytes, not the range's %d", r, compress, got.Bytes, len(want))
			}
			if got.Framed != compress {
				t.Errorf("chunks %v compress=%v: framed %v", r, compress, got.Framed)
			}
			onlyRandom := r == [2]int{3, 4}
			switch {
			case !compress && got.Wire != got.Bytes:
				t.Errorf("chunks %v raw: %d bytes on the wire for %d", r, got.Wire, got.Bytes)
			case compress && onlyRandom && (got.Wire <= got.Bytes || got.Wire > got.Bytes+16):
				t.Errorf("random chunk compressed: %d bytes on the wire for %d, want it raw plus a frame header", got.Wire, got.Bytes)
			case compress && !onlyRandom && got.Wire*2 > got.Bytes:
				t.Errorf("chunks %v compressed: %d bytes on the wire for %d of text", r, got.Wire, got.Bytes)
			}
		}
	}
}

// A server that does not compress (as one that predates frames: it
// ignores the parameter) answers the raw range, and a client that asked
// for compression takes it as it is.
func TestFetchChunksOldServerFallsBack(t *testing.T) {
	env, f := chunkedPeer(t, ServerConfig{CompressWorkers: -1})
	off, lens := f.lens(0, 5)
	var buf bytes.Buffer
	got, err := env.client.FetchChunks(context.Background(), env.addr, 3, "big.log", off, lens, ChunkOptions{Compress: true}, &buf)
	if err != nil {
		t.Fatal(err)
	}
	if got.Framed || got.Wire != int64(len(f.content)) || !bytes.Equal(buf.Bytes(), f.content) {
		t.Fatalf("framed %v, %d bytes on the wire, content equal %v; want the raw range", got.Framed, got.Wire, bytes.Equal(buf.Bytes(), f.content))
	}
}

// A range that is not a run of whole chunks, or a file without a chunk
// list, is answered raw even when frames are asked for.
func TestFramesOnlyForWholeChunks(t *testing.T) {
	env, f := chunkedPeer(t, ServerConfig{})
	for _, r := range []struct {
		path   string
		off, n int64
	}{
		{"big.log", 1, f.entry.Chunks[0].Len},     // starts inside a chunk
		{"big.log", 0, f.entry.Chunks[0].Len + 1}, // ends inside one
		{"sub/b.bin", 0, 100 << 10},               // no chunk list
	} {
		var buf bytes.Buffer
		got, err := env.client.FetchChunks(context.Background(), env.addr, 3, r.path, r.off, []int64{r.n}, ChunkOptions{Compress: true}, &buf)
		if err != nil || got.Framed || got.Bytes != r.n {
			t.Errorf("%s %d+%d: %+v, %v; want a raw answer", r.path, r.off, r.n, got, err)
		}
	}
}

// The enc parameter is inside the signed URI: adding it to a request
// signed without it is refused.
func TestCompressParameterIsSigned(t *testing.T) {
	env, f := chunkedPeer(t, ServerConfig{})
	req, err := http.NewRequest("GET", env.http.URL+"/v1/file?gen=3&path=big.log", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Range", "bytes=0-"+itoa(f.entry.Chunks[0].Len-1))
	Sign(req, testSecret, time.Now())
	req.URL.RawQuery += "&enc=zstd"
	resp, err := env.http.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("request with enc added after signing: %s, want 401", resp.Status)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// Frames nobody asked for, or of a newer format, fail the request with a
// message saying what to do.
func TestFramesUnaskedOrNewer(t *testing.T) {
	f := newChunkedFile("big.log")
	off, lens := f.lens(0, 1)
	for _, c := range []struct {
		version  string
		compress bool
		want     string
	}{
		{"1", false, "not asked for"},
		{"2", true, "upgrade fanout"},
	} {
		addr := fakePeer(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set(headerFrames, c.version)
			w.Header().Set("Content-Range", "bytes 0-"+itoa(lens[0]-1)+"/"+itoa(f.entry.Size))
			w.WriteHeader(http.StatusPartialContent)
			(&frameWriter{w: w}).chunk(f.content[:lens[0]])
		})
		c2 := NewClient(ClientConfig{Secrets: [][]byte{testSecret}})
		var buf bytes.Buffer
		_, err := c2.FetchChunks(context.Background(), addr, 3, "big.log", off, lens, ChunkOptions{Compress: c.compress}, &buf)
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), c.want) || buf.Len() != 0 {
			t.Errorf("frames version %s, compress %v: %v (%d bytes written); want unavailable saying %q", c.version, c.compress, err, buf.Len(), c.want)
		}
		c2.CloseIdleConnections()
	}
}

// A peer that breaks off mid-frames fails the request as unavailable, and
// the writer never gets a partial chunk.
func TestFramesCutShortByPeer(t *testing.T) {
	f := newChunkedFile("big.log")
	off, lens := f.lens(0, 3)
	addr := fakePeer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(headerFrames, "1")
		w.Header().Set("Content-Range", "bytes 0-"+itoa(f.entry.Chunks[2].Off+f.entry.Chunks[2].Len-1)+"/"+itoa(f.entry.Size))
		w.WriteHeader(http.StatusPartialContent)
		var body bytes.Buffer
		fw := &frameWriter{w: &body, c: newCompressor(1)}
		fw.chunk(f.content[:lens[0]])
		fw.chunk(f.content[lens[0] : lens[0]+lens[1]])
		w.Write(body.Bytes()[:body.Len()-10])
		panic(http.ErrAbortHandler)
	})
	c := NewClient(ClientConfig{Secrets: [][]byte{testSecret}})
	defer c.CloseIdleConnections()
	var buf bytes.Buffer
	got, err := c.FetchChunks(context.Background(), addr, 3, "big.log", off, lens, ChunkOptions{Compress: true}, &buf)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("%v, want unavailable", err)
	}
	if got.Bytes != lens[0] || !bytes.Equal(buf.Bytes(), f.content[:lens[0]]) {
		t.Fatalf("%d bytes written, want the first chunk's %d", got.Bytes, lens[0])
	}
}

// A host still receiving a chunked file serves its verified chunks as
// frames too, as they land.
func TestIncomingChunksAsFrames(t *testing.T) {
	f := newChunkedFile("big.log")
	tr := newTree(t, 3, f.entry)
	in := NewIncoming([]manifest.Entry{f.entry}, 5*time.Second)
	tr.snap.Incoming = in
	env := startPeerWith(t, tr.snap, ServerConfig{Secrets: [][]byte{testSecret}})
	env.server.comp.maxTime = time.Hour
	tmp, err := os.OpenFile(filepath.Join(tr.root, ".fanout-tmp-big"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer tmp.Close()
	in.Begin(f.entry, tmp)
	off, lens := f.lens(0, 3)
	type result struct {
		got Received
		b   []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		var buf bytes.Buffer
		got, err := env.client.FetchChunks(context.Background(), env.addr, 3, "big.log", off, lens, ChunkOptions{Compress: true}, &buf)
		done <- result{got, buf.Bytes(), err}
	}()
	for i, c := range f.entry.Chunks[:3] {
		if _, err := tmp.WriteAt(f.content[c.Off:c.Off+c.Len], c.Off); err != nil {
			t.Fatal(err)
		}
		in.Landed(f.entry, i)
	}
	select {
	case r := <-done:
		end := f.entry.Chunks[2].Off + f.entry.Chunks[2].Len
		if r.err != nil || !r.got.Framed || !bytes.Equal(r.b, f.content[:end]) || r.got.Wire*2 > r.got.Bytes {
			t.Fatalf("%+v, %v, content equal %v; want compressed frames of the landed chunks", r.got, r.err, bytes.Equal(r.b, f.content[:end]))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no answer for chunks that landed")
	}
}
