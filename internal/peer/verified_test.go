package peer

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/fanout/fanout/internal/chunk"
	"github.com/fanout/fanout/internal/manifest"
)

// TestVerifyServed: a server that verifies what it serves (the origin)
// sends a file's published bytes while they match, answers 409 (ErrStale,
// never bad bytes) for a chunk edited in place with the size kept, breaks
// off a whole-file answer before the edited chunk, and names the file to
// its changed callback; chunks before the edit still serve.
func TestVerifyServed(t *testing.T) {
	root := filepath.Join(t.TempDir(), "task")
	mustMkdir(t, root)
	big := make([]byte, 6<<20)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range big {
		big[i] = byte(rng.Uint32())
	}
	mustWrite(t, filepath.Join(root, "big"), big)
	mustWrite(t, filepath.Join(root, "small"), []byte("small and unchanged"))
	e, m, changedPaths := startVerifying(t, root)

	got, err := fetch(t, e.client, e.addr, 1, "big", 0)
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("unchanged big file: %d bytes, %v", len(got), err)
	}
	ent, _ := m.Lookup("big")
	if len(ent.Chunks) < 3 {
		t.Fatalf("want a file of several chunks, got %d", len(ent.Chunks))
	}
	// Edit one byte of the third chunk in place: same size.
	c2 := ent.Chunks[2]
	f, err := os.OpenFile(filepath.Join(root, "big"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{big[c2.Off+10] ^ 0xff}, c2.Off+10)
	f.Close()

	if got, err := fetch(t, e.client, e.addr, 1, "small", 0); err != nil || string(got) != "small and unchanged" {
		t.Fatalf("small file: %q, %v", got, err)
	}
	// A range inside the edited chunk: a clean 409.
	if got, err := fetch(t, e.client, e.addr, 1, "big", c2.Off+5); !errors.Is(err, ErrStale) || len(got) != 0 {
		t.Fatalf("range in the edited chunk: %d bytes, %v; want none and ErrStale", len(got), err)
	}
	// The whole file: what arrives is the published bytes only, up to the
	// edited chunk, then the answer breaks.
	got, err = fetch(t, e.client, e.addr, 1, "big", 0)
	if err == nil || int64(len(got)) > c2.Off || !bytes.Equal(got, big[:len(got)]) {
		t.Fatalf("whole edited file: %d bytes (edit at %d), %v; want a prefix of the published bytes and an error", len(got), c2.Off, err)
	}
	if changed := changedPaths(); len(changed) < 2 || changed[0] != "big" {
		t.Fatalf("changed told %q, want big", changed)
	}
}

// startVerifying builds the manifest of the tree at root (format 3) and
// serves it as generation 1 from a server that verifies what it serves;
// changed returns the paths told to VerifyServed's callback so far.
func startVerifying(t *testing.T, root string) (e *peerEnv, m *manifest.Manifest, changed func() []string) {
	t.Helper()
	p := chunk.DefaultParams()
	m, err := manifest.Build(context.Background(), root, manifest.Options{Hash: true, Chunking: &p})
	if err != nil {
		t.Fatal(err)
	}
	e = startPeer(t, snapshotOf(t, 1, root, m))
	var mu sync.Mutex
	var paths []string
	e.server.VerifyServed(func(p string) { mu.Lock(); paths = append(paths, p); mu.Unlock() })
	return e, m, func() []string { mu.Lock(); defer mu.Unlock(); return slices.Clone(paths) }
}

// copyVerified sends exactly bytes [start, end) of a file of many chunks,
// for ranges that start and end inside chunks, on chunk boundaries, or are
// empty, and stops at the first write that fails.
func TestCopyVerifiedRanges(t *testing.T) {
	root := t.TempDir()
	data := make([]byte, 3<<20)
	rng := rand.New(rand.NewPCG(5, 6))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	mustWrite(t, filepath.Join(root, "f"), data)
	p := chunk.Params{Min: 16 << 10, Avg: 64 << 10, Max: 256 << 10}
	m, err := manifest.Build(context.Background(), root, manifest.Options{Hash: true, Chunking: &p})
	if err != nil {
		t.Fatal(err)
	}
	e, _ := m.Lookup("f")
	if len(e.Chunks) < 10 {
		t.Fatalf("want many chunks, got %d", len(e.Chunks))
	}
	f, err := os.Open(filepath.Join(root, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c3 := e.Chunks[3]
	ranges := [][2]int64{{0, int64(len(data))}, {1, int64(len(data)) - 1}, {c3.Off, c3.Off + c3.Len}, {c3.Off + 1, c3.Off + 2}, {c3.Off, c3.Off}, {c3.Off - 7, int64(len(data))}}
	for k := 0; k < 20; k++ {
		a := rng.Int64N(int64(len(data)))
		ranges = append(ranges, [2]int64{a, a + rng.Int64N(int64(len(data))-a+1)})
	}
	for _, r := range ranges {
		var buf bytes.Buffer
		called := 0
		n, err := copyVerified(&buf, f, e, r[0], r[1], func() { called++ })
		if err != nil || n != r[1]-r[0] || !bytes.Equal(buf.Bytes(), data[r[0]:r[1]]) || called != 1 {
			t.Fatalf("range %v: %d bytes, %v, before called %d times; want the range's bytes", r, n, err, called)
		}
	}
	w := &failAfter{n: 200 << 10}
	if n, err := copyVerified(w, f, e, 0, int64(len(data)), nil); !errors.Is(err, errFull) || n > 200<<10 {
		t.Fatalf("a writer that fails: %d bytes written, %v", n, err)
	}
}

var errFull = errors.New("full")

// failAfter takes n bytes, then fails every write.
type failAfter struct{ n int }

func (w *failAfter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		k := w.n
		w.n = 0
		return k, errFull
	}
	w.n -= len(p)
	return len(p), nil
}

// TestVerifyServedBatch: the origin checks each file of a batch as it
// sends it: a file edited in place (size kept) breaks the batch off after
// the files before it, sends none of its new bytes, and is named to the
// changed callback.
func TestVerifyServedBatch(t *testing.T) {
	root := filepath.Join(t.TempDir(), "task")
	mustMkdir(t, filepath.Join(root, "d"))
	files := map[string][]byte{}
	for i, name := range []string{"d/a", "d/b", "d/c"} {
		b := make([]byte, 3000+i)
		for k := range b {
			b[k] = byte(k*7 + i)
		}
		files[name] = b
		mustWrite(t, filepath.Join(root, name), b)
	}
	// Entries: 0 ".", 1 "d", 2 "d/a", 3 "d/b", 4 "d/c".
	e, _, changedPaths := startVerifying(t, root)

	var buf bytes.Buffer
	want := bytes.Join([][]byte{files["d/a"], files["d/b"], files["d/c"]}, nil)
	if _, err := e.client.Batch(context.Background(), e.addr, 1, []int{2, 3, 4}, &buf); err != nil || !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("unchanged batch: %d bytes, %v", buf.Len(), err)
	}
	f, err := os.OpenFile(filepath.Join(root, "d", "b"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{files["d/b"][100] ^ 0xff}, 100)
	f.Close()
	buf.Reset()
	_, err = e.client.Batch(context.Background(), e.addr, 1, []int{2, 3, 4}, &buf)
	if err == nil || buf.Len() > len(files["d/a"]) || !bytes.Equal(buf.Bytes(), files["d/a"][:buf.Len()]) {
		t.Fatalf("batch with an edited file: %d bytes, %v; want at most the file before it, and an error", buf.Len(), err)
	}
	if changed := changedPaths(); len(changed) != 1 || changed[0] != "d/b" {
		t.Fatalf("changed told %q, want d/b", changed)
	}
}
