package manifest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/chunk"
)

// BenchmarkBuild measures Build with Hash and a cold (empty) hash cache, on
// every core: one big file (1 GiB; BUILD_BIG sets the size in MiB) and
// 100,000 small files of 1–8 KiB, 1,000 to a directory (BUILD_FILES sets
// the count), as make bench's trees. Each case runs in format 2 (whole-file
// hashes), format 3 (chunk lists, default chunk sizes) and, for the big
// file, format 3 with WholeHash (both at once, for a fleet that still has
// older minions). It reports the CPU time of a build besides its wall time.
// Put TMPDIR on tmpfs to leave the disk out:
//
//	TMPDIR=/dev/shm go test -run '^$' -bench Build -benchtime 3x ./internal/manifest/
func BenchmarkBuild(b *testing.B) {
	p := chunk.DefaultParams()
	cases := []struct {
		name string
		opts Options
	}{
		{"format2", Options{Hash: true}},
		{"format3", Options{Hash: true, Chunking: &p}},
		{"format3+whole", Options{Hash: true, Chunking: &p, WholeHash: true}},
	}
	b.Run("big", func(b *testing.B) {
		size := int64(1 << 30)
		if v, err := strconv.Atoi(os.Getenv("BUILD_BIG")); err == nil && v > 0 {
			size = int64(v) << 20
		}
		root := b.TempDir()
		if err := writeRandomFile(filepath.Join(root, "big"), size); err != nil {
			b.Fatal(err)
		}
		for _, c := range cases {
			b.Run(c.name, func(b *testing.B) {
				b.SetBytes(size)
				benchBuild(b, root, c.opts)
			})
		}
	})
	b.Run("small", func(b *testing.B) {
		files := 100_000
		if v, err := strconv.Atoi(os.Getenv("BUILD_FILES")); err == nil && v > 0 {
			files = v
		}
		root := b.TempDir()
		if err := writeSmallFiles(root, files); err != nil {
			b.Fatal(err)
		}
		for _, c := range cases[:2] {
			b.Run(c.name, func(b *testing.B) { benchBuild(b, root, c.opts) })
		}
	})
}

// benchBuild builds root with opts and a new cache each time.
func benchBuild(b *testing.B, root string, opts Options) {
	var before, after syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	for b.Loop() {
		opts.Cache = NewCache()
		if _, err := Build(context.Background(), root, opts); err != nil {
			b.Fatal(err)
		}
	}
	syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	cpu := time.Duration(after.Utime.Nano()+after.Stime.Nano()-before.Utime.Nano()-before.Stime.Nano()) / time.Duration(b.N)
	b.ReportMetric(cpu.Seconds(), "cpu-s/op")
}

// writeRandomFile writes size pseudo-random bytes to path, an hour old.
func writeRandomFile(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	r := rand.NewChaCha8([32]byte{1})
	buf := make([]byte, 4<<20)
	for left := size; left > 0; left -= int64(len(buf)) {
		n := min(int64(len(buf)), left)
		r.Read(buf[:n])
		if _, err := f.Write(buf[:n]); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	old := time.Now().Add(-time.Hour)
	return os.Chtimes(path, old, old)
}

// writeSmallFiles writes n files of 1–8 KiB of pseudo-random bytes under
// dir, 1,000 to a directory, an hour old.
func writeSmallFiles(dir string, n int) error {
	r := rand.New(rand.NewPCG(4, 2))
	old := time.Now().Add(-time.Hour)
	buf := make([]byte, 8<<10)
	for i := range n {
		sub := filepath.Join(dir, fmt.Sprintf("d%03d", i/1000))
		if i%1000 == 0 {
			if err := os.MkdirAll(sub, 0o755); err != nil {
				return err
			}
		}
		size := 1<<10 + r.IntN(7<<10+1)
		for j := range size {
			buf[j] = byte(r.Uint32())
		}
		p := filepath.Join(sub, fmt.Sprintf("f%06d.bin", i))
		if err := os.WriteFile(p, buf[:size], 0o644); err != nil {
			return err
		}
		if err := os.Chtimes(p, old, old); err != nil {
			return err
		}
	}
	return nil
}
