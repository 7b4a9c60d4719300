package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/fleet"
)

// masterPoll is fanout-master's default --poll.
const masterPoll = time.Second

// e2eTask is the task path every fanout row distributes: a directory
// holding the row's file.
const e2eTask = "/e2e"

// flushRedis empties the row's Redis between tools.
func flushRedis(ctx context.Context, rs *redisServer) error {
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr})
	defer rdb.Close()
	if err := rdb.FlushAll(ctx).Err(); err != nil {
		return fmt.Errorf("flushall: %w", err)
	}
	return nil
}

// e2eFanout distributes the row's file with fanout: a master and N
// minions, default flags; on the testbed each in its own namespace, in the
// fallback on loopback with --bwlimit.
func (b *bench) e2eFanout(ctx context.Context, env *e2eEnv) (toolRun, error) {
	row := env.row
	run := toolRun{}
	if env.bed == nil && row.Slow == SlowUpload {
		run.Command = "fanout-master run --bwlimit B; fanout-minion run --bwlimit B"
		return run, notApplicable{"--bwlimit caps a host's upload and download together: no upload-only slow host without the testbed"}
	}
	dir := env.runDir
	f, err := fleet.New(fleet.Config{Dir: dir, Bin: b.cfg.Bin, RedisURL: env.redis.URL, Args: b.cfg.FanoutArgs})
	if err != nil {
		return run, err
	}
	defer f.Close()
	secret := filepath.Join(dir, "secret")
	var master *fleet.Proc
	minions := make([]*fleet.Proc, row.N+1) // by host number
	if env.bed != nil {
		const port = ":7070"
		if master, err = f.StartAt(ctx, "master", "fanout-master", netnsExec(0), netbedIP(0)+port); err != nil {
			return run, err
		}
		for i := 1; i <= row.N; i++ {
			if minions[i], err = f.StartAt(ctx, fmt.Sprintf("minion-%02d", i), "fanout-minion", netnsExec(i), netbedIP(i)+port, b.cfg.MinionArgs...); err != nil {
				return run, err
			}
		}
		run.Command = fmt.Sprintf("netbed.sh up %d %d; redis-server --bind %s --protected-mode no; "+
			"ip netns exec fb0 fanout-master run --redis %s --listen %s --advertise %s --secret-file %s --root R0 --state-dir S0; "+
			"for I in 1..%d: ip netns exec fbI fanout-minion run --redis %s --listen 10.250.0.(I+2)%s --advertise 10.250.0.(I+2)%s --secret-file %s --root RI --state-dir SI; "+
			"redis-cli SET task %s (MULTI with TIME)%s",
			row.N, row.Rate>>20, netbedRootIP, env.redis.URL, netbedIP(0)+port, netbedIP(0)+port, secret,
			row.N, env.redis.URL, port, port, secret, e2eTask, extraArgs(b.cfg.FanoutArgs)+minionExtra(b.cfg.MinionArgs))
	} else {
		limit := func(i int) string {
			if row.Slow == SlowBoth && i == env.slowHost {
				return fmt.Sprint(row.Rate / int64(env.factor) >> 10) // KiB/s
			}
			return fmt.Sprint(row.Rate >> 10)
		}
		if master, err = f.StartMaster(ctx, "--bwlimit", limit(0)); err != nil {
			return run, err
		}
		for i := 1; i <= row.N; i++ {
			if minions[i], err = f.StartMinion(ctx, fmt.Sprintf("minion-%02d", i), append([]string{"--bwlimit", limit(i)}, b.cfg.MinionArgs...)...); err != nil {
				return run, err
			}
		}
		run.Command = fmt.Sprintf("fanout-master run --bwlimit %s; %d × fanout-minion run --bwlimit %s (KiB/s; host %d: %s when slow), loopback; redis-cli SET task %s%s",
			limit(0), row.N, limit(1), env.slowHost, limit(env.slowHost), e2eTask, extraArgs(b.cfg.FanoutArgs)+minionExtra(b.cfg.MinionArgs))
	}
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := f.WaitRegistered(rctx, row.N); err != nil {
		return run, fmt.Errorf("%w (logs under %s)", err, dir)
	}
	if err := waitFor(rctx, 30*time.Second, func(ctx context.Context) error {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", master.Addr)
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		return run, fmt.Errorf("master's peer server on %s: %w", master.Addr, err)
	}
	// The file arrives after the fleet is up, as an operator's new file
	// does: the master has never hashed it.
	names, _ := row.files()
	for _, name := range names {
		if err := copyFile(filepath.Join(env.data, name), filepath.Join(master.Root, strings.TrimPrefix(e2eTask, "/"), name)); err != nil {
			return run, err
		}
	}
	// Let start-up work (first verification, heartbeats) settle, and see
	// how busy the machine is without this run.
	idle := startCPU(nil)
	select {
	case <-ctx.Done():
		return run, ctx.Err()
	case <-time.After(2 * time.Second):
	}
	idle.stop()
	// An operator's SET lands at a random moment of the master's poll
	// (--poll, 1 s by default); without this one it would land at the same
	// phase in every run, fixed by the start-up above.
	select {
	case <-ctx.Done():
		return run, ctx.Err()
	case <-time.After(rand.N(masterPoll)):
	}
	pids := []int{master.Pid()}
	for _, m := range minions[1:] {
		pids = append(pids, m.Pid())
	}
	cpu := startCPU(pids)
	redisCPU := startCPU([]int{env.redis.Pid()})
	foreign := startForeign()
	var prof *perfRecord
	if b.cfg.Perf != "" {
		if prof, err = startPerf(b.cfg.Perf, env, pids); err != nil {
			return run, err
		}
	}
	release := func(wait bool) {}
	if (b.cfg.SlowFirst || b.cfg.SlowLast) && row.Slow != "" {
		if release, err = holdForSlowHost(ctx, env.redis.URL, minions, env.slowHost, b.cfg.SlowLast); err != nil {
			return run, err
		}
		defer release(false)
	}
	var timeCmd *redis.TimeCmd
	if _, err := f.Redis.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, f.Coord.Keys().Task(), e2eTask, 0)
		timeCmd = p.Time(ctx)
		return nil
	}); err != nil {
		return run, fmt.Errorf("set task: %w", err)
	}
	held := time.Now()
	release(true)
	heldFor := time.Since(held)
	setAt := timeCmd.Val()
	g, err := waitGeneration(ctx, f.Coord)
	run.Foreign = foreign.stop()
	cpu.stop()
	redisCPU.stop()
	if prof != nil {
		prof.stop(b.out)
	}
	if err != nil {
		return run, fmt.Errorf("%w (logs under %s)", err, dir)
	}
	obs, err := newObserver(env.redis.URL, "")
	if err != nil {
		return run, err
	}
	defer obs.Close()
	events, err := obs.events(ctx)
	if err != nil {
		return run, err
	}
	run.Hosts = map[int]time.Duration{}
	var firstClaim, lastFinish time.Time
	want := fmt.Sprint(g.ID)
	for _, e := range events {
		if e.Gen != want {
			continue
		}
		switch e.Type {
		case "finish":
			if h, ok := hostIndex(e.Host); ok {
				run.Hosts[h] = e.At.Sub(setAt)
			}
			if e.At.After(lastFinish) {
				lastFinish = e.At
			}
		case "claim":
			if firstClaim.IsZero() || e.At.Before(firstClaim) {
				firstClaim = e.At
			}
		}
	}
	dumpEvents(filepath.Join(dir, "events.tsv"), events, want, setAt)
	if firstClaim.IsZero() {
		return run, fmt.Errorf("generation %d done without a claim: the minions held the file already, not a fresh run", g.ID)
	}
	if len(run.Hosts) != row.N {
		return run, fmt.Errorf("done with %d finish events for %d minions (hosts %v)", len(run.Hosts), row.N, sortedHosts(run.Hosts))
	}
	for i := 1; i <= row.N; i++ {
		for _, name := range names {
			if err := sameFile(filepath.Join(env.data, name), filepath.Join(minions[i].Root, strings.TrimPrefix(e2eTask, "/"), name)); err != nil {
				return run, err
			}
		}
	}
	rounds, _ := obs.co.Rounds(ctx, g.ID)
	run.Total = g.DoneAt.Sub(setAt)
	run.CPU = cpu.Procs
	run.Detail = fmt.Sprintf("SET→published %s, →first claim %s, →last finish %s, →done_at %s; chain depth %d; "+
		"cores %.0f%% busy (%.0f%% before; softirq %.0f%%), fanout %.0f%% of it (%.0f%% of that in the kernel), redis %.2f CPU-s",
		seconds(g.Published.Sub(setAt)), seconds(firstClaim.Sub(setAt)), seconds(lastFinish.Sub(setAt)), seconds(run.Total),
		rounds, 100*cpu.MachineUse, 100*idle.MachineUse, 100*cpu.SoftirqUse, 100*Ratio(cpu.Procs, cpu.MachineBusy), 100*Ratio(cpu.Sys, cpu.Procs),
		redisCPU.Procs.Seconds())
	switch {
	case b.cfg.SlowFirst && row.Slow != "":
		run.Detail += fmt.Sprintf("; -slow-first: the other minions stopped until %s after SET", seconds(heldFor))
	case b.cfg.SlowLast && row.Slow != "":
		run.Detail += fmt.Sprintf("; -slow-last: the slow host stopped until %s after SET", seconds(heldFor))
	}
	return run, nil
}

// holdForSlowHost stops every minion but the slow host (SIGSTOP), or with
// last the slow host alone, and returns a function that lets them go on
// (SIGCONT): with wait, once the minions not stopped have their first
// claim in Redis's events, or after slowFirstWait. With -slow-first the
// slow host heads the chain, the case about 1 run in 16 of a slow row
// gets by chance (docs/PERFORMANCE.md, twenty-first session); with
// -slow-last it ends the chain, and nobody behind it bypasses it. Called
// before SET; the function it returns is called after it, and again when
// the run ends (a second call does nothing).
func holdForSlowHost(ctx context.Context, redisURL string, minions []*fleet.Proc, slow int, last bool) (func(wait bool), error) {
	var held []int
	resume := func() {
		for _, pid := range held {
			syscall.Kill(pid, syscall.SIGCONT)
		}
		held = nil
	}
	var running []string // the minions whose claims release the others
	for i, m := range minions {
		if i == 0 || m == nil {
			continue
		}
		if (i == slow) != last {
			running = append(running, fmt.Sprintf("minion-%02d", i))
			continue
		}
		if err := syscall.Kill(m.Pid(), syscall.SIGSTOP); err != nil {
			resume()
			return nil, fmt.Errorf("-slow-first, -slow-last: stop minion %d: %w", i, err)
		}
		held = append(held, m.Pid())
	}
	obs, err := newObserver(redisURL, "")
	if err != nil {
		resume()
		return nil, err
	}
	return func(wait bool) {
		if held == nil {
			return // released already
		}
		defer obs.Close()
		defer resume()
		deadline := time.Now().Add(slowFirstWait)
		for wait && ctx.Err() == nil && time.Now().Before(deadline) {
			events, err := obs.events(ctx)
			if err == nil && !slices.ContainsFunc(running, func(name string) bool {
				return !slices.ContainsFunc(events, func(e coord.Event) bool { return e.Type == "claim" && e.Host == name })
			}) {
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	}, nil
}

// slowFirstWait bounds how long holdForSlowHost keeps the other minions
// stopped after SET.
const slowFirstWait = 3 * time.Second

// waitGeneration polls the generation hash every 50 ms until a generation
// is done (or failed). Its done_at is Redis time, so the poll's latency is
// not in the figure.
func waitGeneration(ctx context.Context, co *coord.Client) (coord.Generation, error) {
	var g coord.Generation
	err := fleet.Poll(ctx, "the generation to be done", func() (bool, error) {
		var err error
		if g, err = co.Current(ctx); err != nil || g.ID == 0 {
			return false, nil
		}
		switch g.State {
		case coord.StateFailed:
			return false, fmt.Errorf("generation %d failed: %s", g.ID, g.Error)
		case coord.StateDone:
			if g.DoneAt.IsZero() {
				return false, errors.New("generation done without done_at")
			}
			return true, nil
		}
		return false, nil
	})
	return g, err
}

// dumpEvents writes generation gen's events, with their time from SET, to
// path: the timeline behind a figure, kept with -keep.
func dumpEvents(path string, events []coord.Event, gen string, setAt time.Time) {
	var b strings.Builder
	b.WriteString("ms_from_set\ttype\thost\tslot\tmsg\n")
	for _, e := range events {
		if e.Gen == gen {
			fmt.Fprintf(&b, "%d\t%s\t%s\t%s\t%s\n", e.At.Sub(setAt).Milliseconds(), e.Type, e.Host, e.Slot, e.Msg)
		}
	}
	os.WriteFile(path, []byte(b.String()), 0o644)
}

// perfRecord is "perf record" attached to the fanout processes from SET
// to done (-perf): where their CPU goes, kernel included.
type perfRecord struct {
	cmd  *exec.Cmd
	out  string
	done chan error
}

// startPerf attaches perf record to pids, writing prefix-ROW-RUN.data.
func startPerf(prefix string, env *e2eEnv, pids []int) (*perfRecord, error) {
	if _, err := exec.LookPath("perf"); err != nil {
		return nil, fmt.Errorf("-perf: perf not on PATH: %w", err)
	}
	ids := make([]string, len(pids))
	for i, p := range pids {
		ids[i] = fmt.Sprint(p)
	}
	out := fmt.Sprintf("%s-%s-%s.data", prefix, env.row.slug(), filepath.Base(env.runDir))
	cmd := exec.Command("perf", "record", "-q", "-F", "499", "-g", "-o", out, "-p", strings.Join(ids, ","))
	cmd.SysProcAttr = dieWithParent()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("-perf: %w", err)
	}
	p := &perfRecord{cmd: cmd, out: out, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	time.Sleep(300 * time.Millisecond) // let it attach to every thread
	return p, nil
}

// stop ends the recording (SIGINT: perf writes its file) and waits.
func (p *perfRecord) stop(log io.Writer) {
	p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
	fmt.Fprintf(log, "bench: perf profile of the fanout processes in %s (perf report -i %s --no-children --sort dso,sym)\n", p.out, p.out)
}

// extraArgs names the extra flags of every fanout process (-fanout-args)
// in a row's command, or nothing.
func extraArgs(args []string) string {
	if len(args) == 0 {
		return ""
	}
	return "; every fanout process with " + strings.Join(args, " ")
}

// minionExtra says, for the row's command, which extra flags every minion
// ran with (-minion-args).
func minionExtra(args []string) string {
	if len(args) == 0 {
		return ""
	}
	return "; every fanout-minion with " + strings.Join(args, " ")
}
