package peer

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"
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
