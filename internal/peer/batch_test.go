package peer

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/manifest"
)

func TestIndices(t *testing.T) {
	for _, idx := range [][]int{{0}, {3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 16}, {1, 3, 5}, {0, 1}} {
		spec := FormatIndices(idx)
		got, err := ParseIndices(spec, 100, 100)
		if err != nil || !slices.Equal(got, idx) {
			t.Errorf("%v -> %q -> %v, %v", idx, spec, got, err)
		}
	}
	if s := FormatIndices([]int{3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 16}); s != "3-10,12,15-16" {
		t.Errorf("FormatIndices = %q", s)
	}
	for _, bad := range []string{"", "x", "-1", "5-3", "3-3", "2,1", "1,1", "0-100", "100", "01", "1-02", "1,,2", " 1", "1-"} {
		if got, err := ParseIndices(bad, 100, 100); err == nil {
			t.Errorf("ParseIndices(%q) = %v, want an error", bad, got)
		}
	}
	if _, err := ParseIndices("0-10", 100, 10); err == nil {
		t.Error("11 indices accepted with a limit of 10")
	}
}

func FuzzParseIndices(f *testing.F) {
	for _, s := range []string{"0", "3-10,12", "1,3,5", "0-99999999999", "5-3", "1,,2", "-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		idx, err := ParseIndices(spec, 1000, 64)
		if err != nil {
			return
		}
		if len(idx) == 0 || len(idx) > 64 {
			t.Fatalf("%q: %d indices", spec, len(idx))
		}
		for i, x := range idx {
			if x < 0 || x >= 1000 || (i > 0 && x <= idx[i-1]) {
				t.Fatalf("%q: bad index list %v", spec, idx)
			}
		}
		if back, err := ParseIndices(FormatIndices(idx), 1000, 64); err != nil || !slices.Equal(back, idx) {
			t.Fatalf("%q: round trip %v -> %v, %v", spec, idx, back, err)
		}
	})
}

func TestBatch(t *testing.T) {
	tr := newTree(t, 2)
	env := startPeer(t, tr.snap)
	// Entries: 0 ".", 1 a.txt, 2 empty, 3 link, 4 sub, 5 sub/b.bin.
	var buf bytes.Buffer
	n, err := env.client.Batch(context.Background(), env.addr, 2, []int{1, 2, 5}, &buf)
	want := slices.Concat(tr.files["a.txt"], tr.files["empty"], tr.files["sub/b.bin"])
	if err != nil || n != int64(len(want)) || !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("Batch = %d bytes, %v; want the three files concatenated (%d bytes)", n, err, len(want))
	}
	for name, idx := range map[string][]int{"a directory": {0}, "a symlink": {3}, "out of range": {9}} {
		buf.Reset()
		if _, err := env.client.Batch(context.Background(), env.addr, 2, idx, &buf); err == nil || errors.Is(err, ErrUnavailable) {
			t.Errorf("batch of %s: %v; want a refusal", name, err)
		}
	}
	if code, _ := env.rawGet(t, "GET", "/v1/batch?gen=2&files=1", nil); code != 401 {
		t.Errorf("unsigned batch: %d, want 401", code)
	}
	if _, err := env.client.Batch(context.Background(), env.addr, 7, []int{1}, &buf); !errors.Is(err, ErrStale) {
		t.Errorf("batch of another generation: %v, want ErrStale", err)
	}
}

// arrivedWriter collects what it is written and says when it holds n
// bytes.
type arrivedWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	n    int
	done chan struct{}
}

func (w *arrivedWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(b)
	if w.buf.Len() >= w.n && w.done != nil {
		close(w.done)
		w.done = nil
	}
	return len(b), nil
}

// TestBatchRelaysFileByFile: a partial source answering a batch sends the
// files it holds before it waits for one it is still receiving: a small
// file ahead of a pending one reaches the puller before the pending one
// lands (it used to wait in the response's buffer for the whole batch, so
// each relay of a chain added a batch's time).
func TestBatchRelaysFileByFile(t *testing.T) {
	tr := newTree(t, 2)
	m := tr.snap.Manifest
	a, b := m.Entries[1], m.Entries[5] // a.txt (13 bytes), sub/b.bin
	in := NewIncoming([]manifest.Entry{a, b}, time.Minute)
	in.Settle([]manifest.Entry{b}) // a.txt is in place; b.bin still arriving
	snap := *tr.snap
	snap.Incoming = in
	env := startPeer(t, &snap)
	w := &arrivedWriter{n: len(tr.files["a.txt"]), done: make(chan struct{})}
	first := w.done
	errc := make(chan error, 1)
	go func() {
		_, err := env.client.Batch(context.Background(), env.addr, 2, []int{1, 5}, w)
		errc <- err
	}()
	select {
	case <-first:
	case err := <-errc:
		t.Fatalf("batch ended before b.bin landed: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("a.txt, held by the source, did not reach the puller while b.bin was still arriving")
	}
	in.End(b, nil) // b.bin lands (its bytes are on disk already)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if want := slices.Concat(tr.files["a.txt"], tr.files["sub/b.bin"]); !bytes.Equal(w.buf.Bytes(), want) {
		t.Fatalf("batch body: %d bytes, want %d", w.buf.Len(), len(want))
	}
}
