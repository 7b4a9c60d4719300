// Command demo runs a real fan-out on this machine: an embedded Redis, a
// master and several minions on loopback sockets, each with its own root
// under a temporary directory. It distributes a generated sample tree,
// prints live progress and a summary, checks every copy entry by entry, then
// changes one file and shows that only that file moves, repairs a
// host's drift, deploys the tree as releases (an atomic switch, a second
// release and a rollback), and runs two named tasks beside it, one for a
// host group. Run it with "make demo".
package main

import (
	"context"
	"flag"
	"fmt"
	"github.com/sirupsen/logrus"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/fanout/fanout/internal/bwlimit"
	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/lab"
)

func main() {
	minions := flag.Int("minions", 8, "number of minions")
	bigMiB := flag.Int("big", 48, "size of the big file in MiB")
	small := flag.Int("small", 400, "number of small files")
	keep := flag.Bool("keep", false, "keep the temporary directory")
	limit := flag.String("bwlimit", "0", "per-host bandwidth cap, rsync style (e.g. 8M), to watch a slower fan-out")
	logLevel := flag.String("log", "", "print the hosts' logs to stderr at this level (info, debug)")
	wholeFile := flag.Bool("whole-file", false, "turn pipelining off: hosts become sources only once they hold the whole tree")
	flag.Parse()
	rate, err := bwlimit.Parse(*limit)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	cfg := lab.Config{Minions: *minions, BWLimit: rate, WholeFile: *wholeFile}
	if *logLevel != "" {
		lvl, err := logrus.ParseLevel(*logLevel)
		if err != nil {
			fmt.Fprintln(os.Stderr, "demo: -log:", err)
			os.Exit(2)
		}
		log := logrus.New()
		log.SetLevel(lvl)
		cfg.Log = log
	}
	err = run(ctx, cfg, int64(*bigMiB)<<20, *small, *keep)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

const task = "/data/models/m42"

func run(ctx context.Context, cfg lab.Config, big int64, small int, keep bool) error {
	minions := cfg.Minions
	dir, err := os.MkdirTemp("", "fanout-demo-")
	if err != nil {
		return err
	}
	if keep {
		fmt.Println("keeping", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	cfg.Dir = dir
	l, err := lab.Start(ctx, cfg)
	if err != nil {
		return err
	}
	defer l.Stop()
	src := filepath.Join(l.Master.Root, task)
	if err := os.MkdirAll(src, 0o755); err != nil {
		return err
	}
	if err := lab.SampleTree(src, big, small); err != nil {
		return fmt.Errorf("write sample tree: %w", err)
	}
	fmt.Printf("fanout demo: embedded Redis at %s, master at %s, %d minions, roots under %s\n",
		l.Mini.Addr(), l.Master.Addr, minions, dir)
	fmt.Printf("watch it from another shell: bin/fanout-master status --watch --redis redis://%s\n", l.Mini.Addr())
	fmt.Printf("sample tree %s: a %s file, %d small files, nested and empty dirs, symlinks\n\n", task, size(big), small)

	fmt.Printf("$ redis-cli set task %s\n", task)
	st, err := distribute(ctx, l, 0)
	if err != nil {
		return err
	}
	if err := check(l, src); err != nil {
		return err
	}

	// A second generation: one small file changes; only it should move.
	changed := filepath.Join(src, "config/run.sh")
	if err := os.WriteFile(changed, []byte("#!/bin/sh\necho serving m42, build 2\n"), 0o755); err != nil {
		return err
	}
	fmt.Printf("\n$ echo 'build 2' > %s/config/run.sh; redis-cli set task %s\n", task, task)
	if _, err := distribute(ctx, l, st.Generation.ID); err != nil {
		return err
	}
	if err := check(l, src); err != nil {
		return err
	}
	if err := drift(ctx, l, src); err != nil {
		return err
	}
	if err := releases(ctx, l, src); err != nil {
		return err
	}
	return tasks(ctx, l)
}

// tasks runs named tasks beside the plain one: a configuration tree for
// every host and a site for the hosts of group web only, published at
// once; it prints every task's progress until all are done, then checks
// the copies.
func tasks(ctx context.Context, l *lab.Lab) error {
	web := l.Minions[:len(l.Minions)/2]
	fmt.Printf("\n# minions 01-%02d restart with --group web\n", len(web))
	for _, h := range web {
		if err := h.Stop(); err != nil {
			return err
		}
		h.Groups = []string{"web"}
		if err := l.StartMinion(ctx, h); err != nil {
			return err
		}
	}
	trees := []struct {
		name, path string
		groups     []string
		big        int64
		small      int
	}{
		{"config", "/etc/app", nil, 0, 200},
		{"site", "/srv/site", []string{"web"}, 8 << 20, 100},
	}
	for _, tr := range trees {
		if err := lab.SampleTree(filepath.Join(l.Master.Root, tr.path), tr.big, tr.small); err != nil {
			return err
		}
	}
	start := time.Now()
	for _, tr := range trees {
		group := ""
		if len(tr.groups) > 0 {
			group = " --group " + strings.Join(tr.groups, ",")
		}
		fmt.Printf("$ fanout-master publish --name %s%s %s\n", tr.name, group, tr.path)
		if err := l.Publish(ctx, tr.name, tr.path, coord.TaskOptions{Groups: tr.groups}); err != nil {
			return err
		}
	}
	names := []string{coord.DefaultTask, "config", "site"}
	for last := ""; ; {
		var lines []string
		done := 0
		for _, name := range names {
			st, err := l.Coord.ForTask(name).Status(ctx)
			if err != nil {
				return err
			}
			groups := "every host"
			if g := st.Generation.Groups; len(g) > 0 {
				groups = "group " + strings.Join(g, ",")
			}
			lines = append(lines, fmt.Sprintf("  %-8s generation %d  %-7s  finished %d/%d  running %d  (%s)",
				name, st.Generation.ID, st.State, len(st.Finished), len(st.Expected), len(st.Running), groups))
			if st.Generation.ID > 0 && st.Generation.State == coord.StateDone {
				done++
			}
		}
		if out := strings.Join(lines, "\n"); out != last {
			fmt.Printf("  %.1fs\n%s\n", time.Since(start).Seconds(), out)
			last = out
		}
		if done == len(names) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	for _, h := range l.Minions {
		for _, tr := range trees {
			dst := filepath.Join(h.Root, tr.path)
			if len(tr.groups) > 0 && len(h.Groups) == 0 {
				if _, err := os.Lstat(dst); err == nil {
					return fmt.Errorf("%s, not in group web, received task %s", h.ID, tr.name)
				}
				continue
			}
			if err := lab.Compare(filepath.Join(l.Master.Root, tr.path), dst); err != nil {
				return fmt.Errorf("%s, task %s: %w", h.ID, tr.name, err)
			}
		}
	}
	fmt.Printf("  verified: config on all %d hosts, site on the %d hosts of group web only, each task with its own generation, queues and status\n", len(l.Minions), len(web))
	return nil
}

// releases deploys the tree as releases (publish --atomic): the first
// switch turns each host's tree into a symlink to a release, a change
// builds a second release beside it and switches, and a rollback switches
// every host back without moving a byte.
func releases(ctx context.Context, l *lab.Lab, src string) error {
	cur, err := l.Coord.Current(ctx)
	if err != nil {
		return err
	}
	atomic := coord.TaskOptions{Atomic: 3}
	fmt.Printf("\n$ fanout-master publish --atomic --keep 3 %s   # deploy as releases\n", task)
	st, err := distributeWith(ctx, l, cur.ID, func() error { return l.Coord.SetTask(ctx, task, atomic) })
	if err != nil {
		return err
	}
	first := st.Generation
	if err := checkReleases(l, src, first); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(src, "config/run.sh"), []byte("#!/bin/sh\necho serving m42, build 3\n"), 0o755); err != nil {
		return err
	}
	fmt.Printf("\n$ echo 'build 3' > %s/config/run.sh; fanout-master publish --atomic --keep 3 %s\n", task, task)
	if st, err = distributeWith(ctx, l, first.ID, func() error { return l.Coord.SetTask(ctx, task, atomic) }); err != nil {
		return err
	}
	if err := checkReleases(l, src, st.Generation); err != nil {
		return err
	}
	hist, err := l.Coord.History(ctx, 10)
	if err != nil {
		return err
	}
	var back coord.Completion
	for _, r := range hist {
		if r.Gen == first.ID {
			back = r
		}
	}
	fmt.Printf("\n$ fanout-master rollback %d\n", first.ID)
	opts := coord.TaskOptions{Atomic: back.Atomic, Rollback: back.Gen, Digest: back.Digest, Files: back.Files, Bytes: back.Bytes, Delete: back.Delete}
	if st, err = distributeWith(ctx, l, st.Generation.ID, func() error { return l.Coord.SetTask(ctx, back.Path, opts) }); err != nil {
		return err
	}
	for _, h := range l.Minions {
		if t, err := os.Readlink(filepath.Join(h.Root, task)); err != nil || !strings.HasSuffix(t, "/"+first.Digest[:16]) {
			return fmt.Errorf("%s: after the rollback %s -> %q (%v), want the release of generation %d", h.ID, task, t, err, first.ID)
		}
	}
	fmt.Printf("  rolled back: every host's %s points at the release of generation %d again (verified against its kept manifest, nothing fetched)\n", task, first.ID)
	return nil
}

// checkReleases checks that every host's task path is a symlink to the
// release of g, identical to src.
func checkReleases(l *lab.Lab, src string, g coord.Generation) error {
	var target string
	for _, h := range l.Minions {
		p := filepath.Join(h.Root, task)
		t, err := os.Readlink(p)
		if err != nil || !strings.HasSuffix(t, "/"+g.Digest[:16]) {
			return fmt.Errorf("%s: %s -> %q (%v), want the release of generation %d", h.ID, task, t, err, g.ID)
		}
		target = t
		resolved, err := filepath.EvalSymlinks(p)
		if err != nil {
			return err
		}
		if err := lab.Compare(src, resolved); err != nil {
			return fmt.Errorf("%s: %w", h.ID, err)
		}
	}
	fmt.Printf("  switched: on every host %s -> %s, identical to the source\n", task, target)
	return nil
}

// drift changes a finished host's tree by hand, no new task: its daemon
// sees it, repairs it from a peer, and status counts the repair.
func drift(ctx context.Context, l *lab.Lab, src string) error {
	h := l.Minions[len(l.Minions)/2]
	root := filepath.Join(h.Root, task)
	fmt.Printf("\n$ rm %s/weights/model.bin; chmod 600 %s/config/run.sh   # on %s, by hand, no new task\n", task, task, h.ID)
	start := time.Now()
	if err := os.Remove(filepath.Join(root, "weights/model.bin")); err != nil {
		return err
	}
	if err := os.Chmod(filepath.Join(root, "config/run.sh"), 0o600); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		st, err := l.Coord.Status(wctx)
		if err == nil && st.Repairs[h.ID] > 0 && len(st.Repairing) == 0 && lab.Compare(src, root) == nil {
			fmt.Printf("  repaired: %s noticed the drift (inotify) and pulled the file back from a peer in %.2fs; status: %d repair(s), generation %d still %s\n",
				h.ID, time.Since(start).Seconds(), st.Repairs[h.ID], st.Generation.ID, st.Generation.State)
			return check(l, src)
		}
		select {
		case <-wctx.Done():
			return fmt.Errorf("drift on %s not repaired: %w", h.ID, wctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// distribute sets the task and follows the generation to the end.
func distribute(ctx context.Context, l *lab.Lab, after int64) (coord.Status, error) {
	return distributeWith(ctx, l, after, func() error { return l.Set(ctx, task) })
}

// distributeWith is distribute with set setting the task.
func distributeWith(ctx context.Context, l *lab.Lab, after int64, set func() error) (coord.Status, error) {
	start := time.Now()
	if err := set(); err != nil {
		return coord.Status{}, err
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	last := time.Time{}
	st, err := l.WaitGeneration(wctx, after, func(st coord.Status) {
		if time.Since(last) < 250*time.Millisecond {
			return
		}
		last = time.Now()
		fmt.Printf("  %5.1fs  generation %d  %-7s  finished %2d/%-2d  running %2d  received %s\n",
			time.Since(start).Seconds(), st.Generation.ID, st.State, len(st.Finished), len(st.Expected), len(st.Running), size(l.Received(st.Generation.ID)))
	})
	if err != nil {
		return st, err
	}
	elapsed := time.Since(start)
	rounds, err := l.Coord.Rounds(ctx, st.Generation.ID)
	if err != nil {
		return st, err
	}
	n := len(st.Finished)
	fmt.Printf("  done: generation %d to %d hosts in %.2fs: %d files, %s per copy, %s moved in all\n",
		st.Generation.ID, n, elapsed.Seconds(), st.Generation.Files, size(st.Generation.Bytes), size(l.Received(st.Generation.ID)))
	fmt.Printf("        rounds: %d (hops in the longest chain origin -> host; whole-file doubling needs ceil(log2(%d+1)) = %d rounds of S/B, a pipelined chain about one)\n",
		rounds, n, int(math.Ceil(math.Log2(float64(n+1)))))
	if rate := l.Config().BWLimit; rate > 0 {
		sb := float64(st.Generation.Bytes) / float64(rate)
		fmt.Printf("        S/B = %s / %s/s = %.2fs; this generation took %.2f x S/B\n",
			size(st.Generation.Bytes), size(rate), sb, elapsed.Seconds()/sb)
	}
	return st, nil
}

func check(l *lab.Lab, src string) error {
	for _, h := range l.Minions {
		if err := lab.Compare(src, filepath.Join(h.Root, task)); err != nil {
			return err
		}
	}
	fmt.Printf("  verified: all %d copies are identical to the source (content, modes, mtimes, symlinks, empty dirs)\n", len(l.Minions))
	return nil
}

// size prints a byte count for people.
func size(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
