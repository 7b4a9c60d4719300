package bwlimit

import (
	"bytes"
	"context"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	tests := map[string]int64{
		"": 0, "0": 0, "16M": 16 << 20, "16m": 16 << 20, "1.5G": 3 << 29, "512K": 512 << 10,
		"100": 100 << 10, "8MB": 8 << 20, "8M/s": 8 << 20,
	}
	for in, want := range tests {
		got, err := Parse(in)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"fast", "-1M", "M", "1X"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) succeeded", bad)
		}
	}
}

func TestWriterPassesBytesAndHonoursCancel(t *testing.T) {
	if New(0) != nil {
		t.Fatal("New(0) limits")
	}
	var buf bytes.Buffer
	data := bytes.Repeat([]byte("x"), 300<<10)
	w := New(64<<10).Writer(context.Background(), &buf)
	// The bucket starts full (64 KiB), so 300 KiB needs about 3.7s of
	// tokens: cancel long before and check the write stops early.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	n, err := New(64<<10).Writer(ctx, &buf).Write(data)
	if err == nil || n >= len(data) || n != buf.Len() {
		t.Fatalf("cancelled write: n=%d buffered=%d err=%v", n, buf.Len(), err)
	}
	buf.Reset()
	small := data[:32<<10]
	if n, err := w.Write(small); err != nil || n != len(small) || !bytes.Equal(buf.Bytes(), small) {
		t.Fatalf("write within the burst: %d %v", n, err)
	}
}
