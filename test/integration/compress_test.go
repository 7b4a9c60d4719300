package integration

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/lab"
)

// writeMixedTree writes a tree of text-like and random content under dir:
// a log of textMiB MiB, a random blob of randMiB MiB and a small file. It
// returns the bytes written.
func writeMixedTree(t *testing.T, dir string, seed uint64, textMiB, randMiB int) int64 {
	t.Helper()
	mustMkdir(t, filepath.Join(dir, "logs"))
	r := rand.New(rand.NewPCG(seed, 1))
	var text bytes.Buffer
	for text.Len() < textMiB<<20 {
		fmt.Fprintf(&text, "2026-11-28T%02d:%02d:%02d host=web-%03d method=GET path=/v1/items/%d status=%d latency_ms=%d\n",
			r.IntN(24), r.IntN(60), r.IntN(60), r.IntN(200), r.IntN(1e6), 200+100*r.IntN(4), r.IntN(2000))
	}
	blob := make([]byte, randMiB<<20)
	for i := range blob {
		blob[i] = byte(r.Uint32())
	}
	files := map[string][]byte{"logs/app.log": text.Bytes(), "blob.bin": blob, "small.txt": []byte("a small file\n")}
	var n int64
	for p, b := range files {
		if err := os.WriteFile(filepath.Join(dir, p), b, 0o644); err != nil {
			t.Fatal(err)
		}
		n += int64(len(b))
	}
	return n
}

// served sums, over every host's peer server, the body bytes sent, and
// the chunks sent compressed: their bytes and those of their zstd form.
func served(l *lab.Lab) (body, raw, sent int64) {
	for _, h := range append([]*lab.Host{l.Master}, l.Minions...) {
		body += h.Served.Load()
		raw += h.CompressedRaw.Load()
		sent += h.CompressedSent.Load()
	}
	return body, raw, sent
}

// TestCompressedFanout: a task published with compress reaches every host
// identical, its text chunks compressed on the wire (several-fold) and its
// random ones raw; the same fleet without the option compresses nothing.
//
// How much of the task travels compressed depends on the CPU: a chunk
// that waits too long for a compressor goes raw (under the race detector,
// most do), so the ratio is measured by the benchmark, not asserted here.
func TestCompressedFanout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, err := lab.Start(ctx, lab.Config{Dir: t.TempDir(), Minions: 4, Uploads: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	run := func(path string, seed uint64, opts coord.TaskOptions, after int64) (coord.Status, int64) {
		t.Helper()
		src := filepath.Join(l.Master.Root, path)
		size := writeMixedTree(t, src, seed, 8, 2)
		if err := l.Coord.SetTask(ctx, path, opts); err != nil {
			t.Fatal(err)
		}
		st, err := l.WaitGeneration(ctx, after, nil)
		if err != nil {
			t.Fatal(err)
		}
		if st.State != coord.StateDone {
			t.Fatalf("generation %d ended %s: %s", st.Generation.ID, st.State, st.Generation.Error)
		}
		for _, h := range l.Minions {
			if err := lab.Compare(src, filepath.Join(h.Root, path)); err != nil {
				t.Fatalf("generation %d: %v", st.Generation.ID, err)
			}
		}
		return st, size
	}
	st, _ := run("/data/plain", 1, coord.TaskOptions{}, 0)
	body, raw, _ := served(l)
	if st.Generation.Compress || raw != 0 {
		t.Fatalf("a task published without compress: compress %v, %d bytes sent compressed", st.Generation.Compress, raw)
	}
	st, size := run("/data/compressed", 2, coord.TaskOptions{Compress: true}, st.Generation.ID)
	body2, raw, sent := served(l)
	t.Logf("compressed task: %d hosts × %d bytes; %d bytes served (the same fleet moved %d for the plain one); %d bytes of chunks sent as %d", len(l.Minions), size, body2-body, body, raw, sent)
	if !st.Generation.Compress {
		t.Error("a task published with compress is not marked compress")
	}
	if raw == 0 || sent*2 > raw {
		t.Errorf("%d bytes of chunks sent compressed as %d: want log lines compressed at least two-fold", raw, sent)
	}
}

// TestCompressHostFlag: a minion's own --compress asks for compressed
// chunks of a task published without the option.
func TestCompressHostFlag(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, err := lab.Start(ctx, lab.Config{Dir: t.TempDir(), Minions: 2, Compress: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	src := filepath.Join(l.Master.Root, task)
	writeMixedTree(t, src, 3, 4, 1)
	if err := l.Set(ctx, task); err != nil {
		t.Fatal(err)
	}
	st, err := l.WaitGeneration(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != coord.StateDone || st.Generation.Compress {
		t.Fatalf("generation %d: state %s, compress %v; want done, published without compress", st.Generation.ID, st.State, st.Generation.Compress)
	}
	for _, h := range l.Minions {
		if err := lab.Compare(src, filepath.Join(h.Root, task)); err != nil {
			t.Fatal(err)
		}
	}
	if _, raw, sent := served(l); raw == 0 || sent*2 > raw {
		t.Errorf("%d bytes of chunks sent compressed as %d: want log lines compressed at least two-fold", raw, sent)
	}
}
