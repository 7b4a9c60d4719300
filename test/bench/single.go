package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/fanout/fanout/internal/lab"
)

// pairRun is one fanout transfer from a master to a single minion.
type pairRun struct {
	res     result
	setup   time.Duration // SET task → published: the master's walk and hash
	command string
	// cpu is the busy time of all cores from SET task to the finish: the
	// master's and the minion's work, the kernel's copies and Redis's.
	cpu time.Duration
}

// endToEnd is what an operator waits: SET task → the minion's finish,
// the master's walk and hash included.
func (r pairRun) endToEnd() time.Duration { return r.setup + r.res.Elapsed }

// transferPair distributes the task directory name (already written under
// the master root by fill) to one fresh minion and checks the copy.
func (b *bench) transferPair(ctx context.Context, part, name string, fill func(taskDir string) error) (pairRun, string, error) {
	dir := filepath.Join(b.cfg.Dir, part)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return pairRun{}, "", fmt.Errorf("%s dir: %w", part, err)
	}
	prefix := part + ":"
	l, err := lab.Start(ctx, lab.Config{Dir: dir, Minions: 1, RedisURL: b.redis.URL, Prefix: prefix, Poll: b.cfg.Poll})
	if err != nil {
		return pairRun{}, "", fmt.Errorf("start master and minion: %w", err)
	}
	defer l.Stop()
	src := filepath.Join(l.Master.Root, name)
	if err := fill(src); err != nil {
		return pairRun{}, "", err
	}
	obs, err := newObserver(b.redis.URL, prefix)
	if err != nil {
		return pairRun{}, "", err
	}
	defer obs.Close()
	if err := warmFor(dir, src); err != nil {
		return pairRun{}, "", err
	}
	start := time.Now()
	meter := startCPU(nil)
	res, err := obs.publish(ctx, "/"+name, 0, b.cfg.Timeout)
	meter.stop()
	if err != nil {
		return pairRun{}, src, fmt.Errorf("fanout %s: %w", part, err)
	}
	if err := sameTree(src, filepath.Join(l.Minions[0].Root, name)); err != nil {
		return pairRun{}, src, fmt.Errorf("fanout %s: %w", part, err)
	}
	return pairRun{
		res:     res,
		setup:   res.Gen.Published.Sub(start),
		cpu:     meter.MachineBusy,
		command: fmt.Sprintf("master + 1 minion (internal/lab, one process), --poll %s, redis-server; SET task /%s", b.cfg.Poll, name),
	}, src, nil
}

// warmFor warms memory (warmMemory) under dir for a copy of the tree at
// src: twice its bytes, each file counted as at least a page.
func warmFor(dir, src string) error {
	files, bytes, err := treeBytes(src)
	if err != nil {
		return err
	}
	return warmMemory(dir, 2*(bytes+int64(files)*4096))
}

// sameTree checks that dst holds as many regular files and bytes as src.
// fanout verified every file's hash already; this catches a benchmark that
// measured a copy that did not happen. (lab.Compare reads every byte with
// two 1 MiB buffers per file: minutes on 100,000 small files.)
func sameTree(src, dst string) error {
	sf, sb, err := treeBytes(src)
	if err != nil {
		return err
	}
	df, db, err := treeBytes(dst)
	if err != nil {
		return err
	}
	if sf != df || sb != db {
		return fmt.Errorf("copy holds %d files, %d bytes; source %d files, %d bytes", df, db, sf, sb)
	}
	return nil
}

// bigFile is benchmark 2: one file of b.cfg.Big bytes on loopback with no
// limit, fanout against rsync in daemon mode and cp.
func (b *bench) bigFile(ctx context.Context, t *Table) error {
	const part = "big"
	size := b.cfg.Big
	run, src, err := b.transferPair(ctx, part, "big", func(dir string) error {
		return writeBigFile(filepath.Join(dir, "file.bin"), size, 2)
	})
	if err != nil {
		return err
	}
	label := "2 one " + sizeString(size) + " file"
	fan := run.endToEnd()
	cpDst := filepath.Join(b.cfg.Dir, part, "cp")
	if err := os.MkdirAll(cpDst, 0o755); err != nil {
		return fmt.Errorf("cp dir: %w", err)
	}
	if err := warmFor(cpDst, src); err != nil {
		return err
	}
	cpTime, err := timeCommand(ctx, "cp", filepath.Join(src, "file.bin"), cpDst+"/")
	if err != nil {
		return err
	}
	os.RemoveAll(cpDst)
	rs, err := b.rsyncCopy(ctx, part, src)
	if err != nil {
		return err
	}
	rsTime, rsCmd := rs.elapsed, rs.command
	t.Add(Row{Bench: label, Case: "fanout", Figure: fmt.Sprintf("%.0f MB/s (%s)", MBps(size, fan), seconds(fan)),
		Ratio:   fmt.Sprintf("speed %.2f × rsync, %.2f × cp", Ratio(rsTime, fan), Ratio(cpTime, fan)),
		Command: run.command})
	t.Add(Row{Bench: label, Case: "rsync daemon", Figure: fmt.Sprintf("%.0f MB/s (%s)", MBps(size, rsTime), seconds(rsTime)),
		Ratio: "speed 1", Command: rsCmd})
	t.Add(Row{Bench: label, Case: "cp", Figure: fmt.Sprintf("%.0f MB/s (%s)", MBps(size, cpTime), seconds(cpTime)),
		Ratio: fmt.Sprintf("speed %.2f × rsync", Ratio(rsTime, cpTime)), Command: "cp " + sizeString(size) + " file into an empty dir"})
	t.Note("2: fanout time is SET task → the minion's finish event, end to end: the master's walk and BLAKE3 hash (%s), "+
		"then publish → finish (%s); rsync and cp are wall times of the command. Roots on %s. %s",
		seconds(run.setup), seconds(run.res.Elapsed), b.cfg.Dir, cpuNote(run.cpu, rs.cpu, rsTime))
	return nil
}

// smallFiles is benchmark 3: b.cfg.Files files of 1–8 KiB, fanout against
// rsync in daemon mode.
func (b *bench) smallFiles(ctx context.Context, t *Table) error {
	const part = "small"
	var total int64
	run, src, err := b.transferPair(ctx, part, "small", func(dir string) error {
		var err error
		total, err = writeSmallFiles(dir, b.cfg.Files)
		return err
	})
	if err != nil {
		return err
	}
	rs, err := b.rsyncCopy(ctx, part, src)
	if err != nil {
		return err
	}
	rsTime, rsCmd := rs.elapsed, rs.command
	label := fmt.Sprintf("3 %d small files", b.cfg.Files)
	fan := run.endToEnd()
	n := time.Duration(b.cfg.Files)
	t.Add(Row{Bench: label, Case: "fanout", Figure: fmt.Sprintf("%s (%d µs/file)", seconds(fan), (fan / n).Microseconds()),
		Ratio: fmt.Sprintf("time %.2f × rsync", Ratio(fan, rsTime)), Command: run.command})
	t.Add(Row{Bench: label, Case: "rsync daemon", Figure: fmt.Sprintf("%s (%d µs/file)", seconds(rsTime), (rsTime / n).Microseconds()),
		Ratio: "time 1", Command: rsCmd})
	t.Note("3: %d files, %s in all, 1,000 per directory; fanout time is SET task → finish event, end to end: the master's walk and hash (%s), then publish → finish (%s). %s",
		b.cfg.Files, sizeString(total), seconds(run.setup), seconds(run.res.Elapsed), cpuNote(run.cpu, rs.cpu, rsTime))
	return nil
}

// rsyncRun is one copy through an rsync daemon.
type rsyncRun struct {
	elapsed time.Duration // wall time of the client command
	cpu     time.Duration // busy time of all cores meanwhile
	command string
}

// rsyncCopy copies src through an rsync daemon into an empty directory.
func (b *bench) rsyncCopy(ctx context.Context, part, src string) (rsyncRun, error) {
	base := filepath.Join(b.cfg.Dir, part, "rsync")
	d, err := startRsyncDaemon(ctx, src, filepath.Join(base, "conf"))
	if err != nil {
		return rsyncRun{}, err
	}
	defer d.Stop()
	dst := filepath.Join(base, "dst")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return rsyncRun{}, fmt.Errorf("rsync dst: %w", err)
	}
	defer os.RemoveAll(dst)
	args := []string{"-a", "--whole-file", d.URL(), dst + "/"}
	if err := warmFor(dst, src); err != nil {
		return rsyncRun{}, err
	}
	meter := startCPU(nil)
	elapsed, err := timeCommand(ctx, "rsync", args...)
	meter.stop()
	if err != nil {
		return rsyncRun{}, err
	}
	return rsyncRun{elapsed: elapsed, cpu: meter.MachineBusy,
		command: "rsync -a --whole-file rsync://127.0.0.1:PORT/src/ DST/ (rsync --daemon, empty DST)"}, nil
}

// cpuNote says what each tool cost the machine's cores, and the least
// time fanout's CPU could take on them: what bounds a ratio on a machine
// with few cores.
func cpuNote(fanout, rsync, rsTime time.Duration) string {
	n := runtime.NumCPU()
	return fmt.Sprintf("CPU, busy time of all %d cores (USER_HZ ticks, other processes included): fanout %s (no less than %s of wall time on %d cores), rsync %s (%.1f cores busy over its %s).",
		n, seconds(fanout), seconds(fanout/time.Duration(n)), n, seconds(rsync), rsync.Seconds()/max(rsTime.Seconds(), 1e-9), seconds(rsTime))
}
