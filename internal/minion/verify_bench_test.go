package minion

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/fanout/fanout/internal/manifest"
	"github.com/fanout/fanout/internal/metrics"
)

// BenchmarkVerify measures one verification pass of a held tree with a
// warm hash cache: the cost of drift detection. FILES sets the tree size
// (default 100,000 files of 1 KiB in 1,000 directories). It reports the
// CPU time of a pass besides its wall time.
//
//	go test -run '^$' -bench Verify -benchtime 5x ./internal/minion/
func BenchmarkVerify(b *testing.B) {
	files := 100_000
	if v, err := strconv.Atoi(os.Getenv("FILES")); err == nil && v > 0 {
		files = v
	}
	dir := b.TempDir()
	root := filepath.Join(dir, "root")
	task := "/tree"
	tree := filepath.Join(root, task)
	data := make([]byte, 1024)
	old := time.Now().Add(-time.Hour)
	for i := range files {
		d := filepath.Join(tree, fmt.Sprintf("d%03d", i%1000))
		if i < 1000 {
			if err := os.MkdirAll(d, 0o755); err != nil {
				b.Fatal(err)
			}
		}
		p := filepath.Join(d, fmt.Sprintf("f%06d", i))
		data[0], data[1] = byte(i), byte(i>>8)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			b.Fatal(err)
		}
		os.Chtimes(p, old, old)
	}
	cache := manifest.NewCache()
	man, err := manifest.Build(context.Background(), tree, manifest.Options{Hash: true, Cache: cache})
	if err != nil {
		b.Fatal(err)
	}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	m := &Minion{
		cfg:     Config{Root: root, StateDir: dir, Log: log, Metrics: metrics.New()},
		cache:   cache,
		held:    &held{Gen: 1, Digest: "d", Path: task},
		heldMan: man,
	}
	if plan, err := m.verify(context.Background()); err != nil || !plan.Empty() {
		b.Fatalf("first pass: %v, %d actions", err, len(plan.Actions))
	}
	var before, after syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	b.ResetTimer()
	for b.Loop() {
		plan, err := m.verify(context.Background())
		if err != nil || !plan.Empty() {
			b.Fatalf("%v, %d actions", err, len(plan.Actions))
		}
	}
	b.StopTimer()
	syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	cpu := time.Duration(after.Utime.Nano()+after.Stime.Nano()-before.Utime.Nano()-before.Stime.Nano()) / time.Duration(b.N)
	b.ReportMetric(cpu.Seconds(), "cpu-s/op")
	b.ReportMetric(float64(files), "files")
}
