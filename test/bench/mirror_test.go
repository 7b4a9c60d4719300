package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/fleet"
	"github.com/fanout/fanout/internal/lab"
	"github.com/fanout/fanout/internal/redistest"
)

// TestMirrorLag measures live mirroring (issue 12) with real processes: a
// master in watch mode (--delay 1s, --max-delay 10s) and 8 minions on
// loopback, on a real redis-server. For one small change, a burst of
// 1,000 file writes over 2 s, and one change in a tree of 100,000 files,
// it reports the lag from the (last) write on the master to the change
// being identical on all 8 minions (polled every 20 ms), the generations
// published, and the CPU the master process spent meanwhile (user +
// system, from /proc). Every copy is then compared with the master's tree,
// entry by entry. It is a measurement, not part of make test:
//
//	FANOUT_BENCH_MIRROR=1 nice -n 15 go test -count=1 -v -timeout 30m -run TestMirrorLag ./test/bench/
func TestMirrorLag(t *testing.T) {
	if os.Getenv("FANOUT_BENCH_MIRROR") == "" {
		t.Skip("a measurement: set FANOUT_BENCH_MIRROR=1 to run it")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	for _, prog := range []string{"master", "minion"} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(bin, "fanout-"+prog), "./"+prog)
		cmd.Dir = "../.."
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", prog, err, out)
		}
	}
	rs := redistest.NeedReal(t)
	f, err := fleet.New(fleet.Config{Dir: filepath.Join(dir, "fleet"), Bin: bin, RedisURL: rs.URL, Args: []string{"--poll", "1s", "--log-level", "warn"}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := f.Close(); err != nil {
			t.Error(err)
		}
	}()
	task := "/data/mirror"
	m, err := f.StartMaster(ctx, "--watch", "--delay", "1s", "--max-delay", "10s")
	if err != nil {
		t.Fatal(err)
	}
	var minions []*fleet.Proc
	for i := range 8 {
		p, err := f.StartMinion(ctx, fmt.Sprintf("m%d", i+1))
		if err != nil {
			t.Fatal(err)
		}
		minions = append(minions, p)
	}
	if err := f.WaitRegistered(ctx, 8); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(m.Root, task)
	publish := func() {
		if err := f.Coord.SetTask(ctx, task, coord.TaskOptions{Delete: true}); err != nil {
			t.Fatal(err)
		}
	}

	// waitSame waits until every minion holds want (path → content) and
	// the newest generation is done; it returns when it saw that.
	waitSame := func(want map[string][]byte) time.Time {
		t.Helper()
		err := fleet.Poll(ctx, "the change on every minion", func() (bool, error) {
			for _, p := range minions {
				for rel, b := range want {
					got, err := os.ReadFile(filepath.Join(p.Root, task, rel))
					if err != nil || !bytes.Equal(got, b) {
						return false, nil
					}
				}
			}
			st, err := f.Coord.Status(ctx)
			return err == nil && st.State == coord.StateDone, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return time.Now()
	}
	compareAll := func() {
		t.Helper()
		for _, p := range minions {
			if err := lab.Compare(src, filepath.Join(p.Root, task)); err != nil {
				t.Fatal(err)
			}
		}
	}
	current := func() int64 {
		g, err := f.Coord.Current(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return g.ID
	}
	write := func(rel, s string) {
		p := filepath.Join(src, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var rows []string
	measure := func(name string, change func() (first, last time.Time, want map[string][]byte)) {
		t.Helper()
		before := current()
		cpu0 := procCPU(t, m.Pid())
		first, last, want := change()
		seen := waitSame(want)
		cpu := procCPU(t, m.Pid()) - cpu0
		gens := current() - before
		row := fmt.Sprintf("| %s | %s | %s | %d | %s |", name, seen.Sub(last).Round(10*time.Millisecond),
			seen.Sub(first).Round(10*time.Millisecond), gens, cpu.Round(10*time.Millisecond))
		rows = append(rows, row)
		t.Log(row)
		compareAll()
	}
	makeTree := func(files, perDir int) {
		for i := range files {
			write(fmt.Sprintf("d%03d/f%05d", i/perDir, i), fmt.Sprintf("file %d\n", i))
		}
	}

	// A tree of 1,000 small files (FANOUT_BENCH_MIRROR=big: only the
	// 100,000-file tree; =small: only the 1,000-file one).
	small := os.Getenv("FANOUT_BENCH_MIRROR") != "big"
	makeTree(1000, 100)
	publish()
	if _, err := f.WaitDone(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if small {
		time.Sleep(2 * time.Second) // the master's first full walk after arming
		measure("one small change, 1,000-file tree", func() (time.Time, time.Time, map[string][]byte) {
			now := time.Now()
			write("d000/f00000", "changed once\n")
			return now, now, map[string][]byte{"d000/f00000": []byte("changed once\n")}
		})
		measure("burst: 1,000 new files written over 2 s", func() (time.Time, time.Time, map[string][]byte) {
			want := map[string][]byte{}
			start := time.Now()
			for i := range 1000 {
				s := fmt.Sprintf("burst %d\n", i)
				rel := fmt.Sprintf("burst/b%04d", i)
				write(rel, s)
				if i%100 == 99 {
					want[rel] = []byte(s)
				}
				if d := time.Until(start.Add(time.Duration(i+1) * 2 * time.Millisecond)); d > 0 {
					time.Sleep(d)
				}
			}
			return start, time.Now(), want
		})
	}

	if os.Getenv("FANOUT_BENCH_MIRROR") == "small" {
		t.Logf("\n| change | lag from the last write to identical on all 8 | from the first write | generations | master CPU |\n| --- | --- | --- | --- | --- |\n%s", strings.Join(rows, "\n"))
		return
	}
	// A task of 100,000 files (1,000 directories of 100).
	task = "/data/big"
	src = filepath.Join(m.Root, task)
	makeTree(100_000, 100)
	before := current()
	start := time.Now()
	cpu0 := procCPU(t, m.Pid())
	publish()
	if _, err := f.WaitDone(ctx, before); err != nil {
		t.Fatal(err)
	}
	rows = append(rows, fmt.Sprintf("| (setup) 100,000-file tree published and held by all 8 | - | %s | %d | %s |",
		time.Since(start).Round(100*time.Millisecond), current()-before, (procCPU(t, m.Pid())-cpu0).Round(10*time.Millisecond)))
	time.Sleep(5 * time.Second) // the master's first full walk after arming
	measure("one small change, 100,000-file tree", func() (time.Time, time.Time, map[string][]byte) {
		now := time.Now()
		write("d500/f50000", "changed in a big tree\n")
		return now, now, map[string][]byte{"d500/f50000": []byte("changed in a big tree\n")}
	})
	t.Logf("\n| change | lag from the last write to identical on all 8 | from the first write | generations | master CPU |\n| --- | --- | --- | --- | --- |\n%s", strings.Join(rows, "\n"))
}

// procCPU is the user plus system CPU time process pid has used.
func procCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name, which is in parentheses.
	rest := string(b[bytes.LastIndexByte(b, ')')+2:])
	fs := strings.Fields(rest)
	utime, _ := strconv.ParseInt(fs[11], 10, 64)
	stime, _ := strconv.ParseInt(fs[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}
