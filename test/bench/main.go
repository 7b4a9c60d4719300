// Command bench measures fanout and prints one markdown table of figures
// taken in one run, each naming the command that produced it:
//
//  1. end to end, what an operator sees: from SET task to the generation's
//     done time, N hosts on the shared testbed (../shared/netbed/netbed.sh:
//     a network namespace per host, tc-shaped links), fanout against a
//     BitTorrent swarm and the original scripts on the same file and links
//     (e2e.go; needs root; without namespaces, a labelled --bwlimit
//     fallback);
//  2. one big file on loopback with no limit, against rsync (daemon mode)
//     and cp;
//  3. many small files against rsync (daemon mode);
//  4. Redis commands per host per task and the command rate of idle
//     polling minions, from INFO commandstats on a real redis-server;
//  5. (-parts fanout, not by default) fan-out time with the tool's own
//     --bwlimit on loopback, publish to last finish, for central, whole-file
//     doubling and pipelined modes.
//
// Run it with "make bench"; -parts chooses the benchmarks and the other
// flags their sizes. docs/PERFORMANCE.md holds the latest table.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/fanout/fanout/internal/bwlimit"
)

// The fan-out modes of benchmark 1.
const (
	ModeCentral   = "central"   // minions --max-uploads 0, master --max-uploads N
	ModeDoubling  = "doubling"  // --pipeline=false: a host serves once it holds the whole copy
	ModePipelined = "pipelined" // --pipeline (the default): a host serves bytes as they land
)

// config is the command line.
type config struct {
	Parts      map[string]bool
	Dir        string        // base directory for roots; removed at the end unless Keep
	Keep       bool          // keep Dir
	Bin        string        // directory holding fanout-master and fanout-minion
	Out        string        // also write the table here
	Poll       time.Duration // --poll of every host
	Timeout    time.Duration // limit on one generation
	Hosts      []int         // benchmark 1: minion counts
	Modes      []string      // benchmark 1: modes
	FanSize    int64         // benchmark 1: S
	BWLimit    string        // benchmark 1: --bwlimit of every host, rsync units
	Rate       int64         // BWLimit in bytes per second
	Big        int64         // benchmark 2: file size
	Files      int           // benchmark 3: file count
	Idle       int           // benchmark 4: idle minions
	IdleWindow time.Duration // benchmark 4: measuring window
	TaskHosts  int           // benchmark 4: minions for commands per host per task
	CPUProfile string        // CPU profile of this process during benchmarks 2 and 3
	Netbed     string        // benchmark 1: directory of netbed.sh; "off": the --bwlimit fallback
	Rows       []e2eRow      // benchmark 1: rows
	Tools      []string      // benchmark 1: tools compared
	SlowHost   int           // benchmark 1: the slow host of a slow row
	SlowFactor int           // benchmark 1: the slow host's link is B/SlowFactor
	SlowFirst  bool          // benchmark 1: fanout's slow host claims first (see holdForSlowHost)
	SlowLast   bool          // benchmark 1: fanout's slow host claims last (see holdForSlowHost)
	E2EFiles   int           // benchmark 1: each row's S in this many files (e2eRow.Files)
	SeedPoll   time.Duration // benchmark 1: seed002's poll of an empty synchronize_queue
	QuietWait  time.Duration // benchmark 1: how long to wait for the machine to be quiet before each measurement
	Repeat     int           // benchmark 1: runs of each measurement; the table gives the median and the range
	Perf       string        // benchmark 1: perf record the fanout processes from SET to done into files with this prefix
	FanoutArgs []string      // benchmark 1: extra flags of every fanout process (a diagnosis, e.g. --log-level debug)
	MinionArgs []string      // benchmark 1: extra flags of every minion (a minion-only flag, e.g. --bypass-slow-relays)
}

// allParts are the benchmarks in the order they run.
var allParts = []string{"e2e", "fanout", "big", "small", "redis"}

// defaultParts are what make bench runs: not "fanout", whose figures use
// the tool's own limiter (benchmark 1 falls back to it by itself when the
// machine has no network namespaces).
var defaultParts = []string{"e2e", "big", "small", "redis"}

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err = run(ctx, cfg, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg config
	parts := fs.String("parts", strings.Join(defaultParts, ","), "benchmarks to run: "+strings.Join(allParts, ","))
	fs.StringVar(&cfg.Netbed, "netbed", "../shared/netbed", "e2e: directory holding the shared testbed's netbed.sh; off: the --bwlimit fallback on loopback")
	rows := fs.String("rows", defaultRows, "e2e: rows N:SIZE:RATE[:slow|:slowup], comma-separated (slow: one host's link at RATE/-slow-factor both ways; slowup: its upload only)")
	tools := fs.String("tools", strings.Join(allTools, ","), "e2e: tools to compare: "+strings.Join(allTools, ","))
	fs.IntVar(&cfg.SlowHost, "slow-host", 3, "e2e: the slow host of slow rows (1..N)")
	fs.IntVar(&cfg.SlowFactor, "slow-factor", 8, "e2e: the slow host's link is RATE divided by this")
	fs.IntVar(&cfg.E2EFiles, "e2e-files", 1, "e2e: each row's SIZE in this many files of SIZE/N under the task, a tree (fanout only: the other tools move one file)")
	fs.BoolVar(&cfg.SlowLast, "slow-last", false, "e2e: in slow rows, fanout's slow host claims last, at the end of the chain, where nobody bypasses it: it is stopped (SIGSTOP) from before SET until the other minions' claims are recorded (the figures count that wait against it)")
	fs.BoolVar(&cfg.SlowFirst, "slow-first", false, "e2e: in slow rows, fanout's slow host claims first, at the head of the chain: the other minions are stopped (SIGSTOP) from before SET until its claim is recorded (the figures count that wait against them)")
	fs.DurationVar(&cfg.SeedPoll, "seed002-poll", 200*time.Millisecond, "e2e: seed002's poll of an empty synchronize_queue (seed002-netbed.sh's 0.2 s)")
	fs.DurationVar(&cfg.QuietWait, "quiet-wait", 5*time.Minute, "e2e: wait up to this long for the machine's cores to be idle before each measurement (a shared machine)")
	fs.IntVar(&cfg.Repeat, "repeat", 3, "e2e: runs of each tool in each row; the table gives the median run and the range")
	fs.StringVar(&cfg.Perf, "perf", "", "e2e: perf record the fanout processes (kernel included) from SET to done, into PREFIX-ROW-RUN.data")
	minionArgs := fs.String("minion-args", "", "e2e: extra flags of every fanout-minion, space-separated (a minion-only flag, e.g. --bypass-slow-relays; the figures then measure those flags)")
	fanoutArgs := fs.String("fanout-args", "", "e2e: extra flags of every fanout process, space-separated (a diagnosis, e.g. \"--log-level debug\"; the figures then measure those flags)")
	hosts := fs.String("hosts", "8,16,32", "fanout: minion counts")
	modes := fs.String("modes", strings.Join([]string{ModeCentral, ModeDoubling, ModePipelined}, ","), "fanout: modes")
	fanSize := fs.String("size", "64M", "fanout: data size S (rsync units: 64M = 64 MiB)")
	big := fs.String("big", "1G", "big: file size")
	fs.StringVar(&cfg.BWLimit, "bwlimit", "16M", "fanout: --bwlimit B of every host")
	fs.StringVar(&cfg.Dir, "dir", defaultDir(), "base directory for the hosts' roots (tmpfs keeps fsync out of the figures)")
	fs.BoolVar(&cfg.Keep, "keep", false, "keep the directory")
	fs.StringVar(&cfg.Bin, "bin", "bin", "directory holding fanout-master and fanout-minion (make build)")
	fs.StringVar(&cfg.Out, "out", "", "also write the table to this file")
	fs.DurationVar(&cfg.Poll, "poll", 100*time.Millisecond, "--poll of every host in benchmarks 2, 3 and 5 (benchmark 1, e2e, runs fanout with its default flags)")
	fs.DurationVar(&cfg.Timeout, "timeout", 5*time.Minute, "limit on one generation")
	fs.IntVar(&cfg.Files, "files", 100_000, "small: file count")
	fs.IntVar(&cfg.Idle, "idle", 1000, "redis: idle minions")
	fs.DurationVar(&cfg.IdleWindow, "idle-window", 20*time.Second, "redis: window over which the idle rate is measured")
	fs.IntVar(&cfg.TaskHosts, "task-hosts", 16, "redis: minions for commands per host per task")
	fs.StringVar(&cfg.CPUProfile, "cpuprofile", "", "write a CPU profile of this process during benchmarks 2 and 3 (in-process master and minion; the last one run wins)")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	cfg.FanoutArgs = strings.Fields(*fanoutArgs)
	cfg.MinionArgs = strings.Fields(*minionArgs)
	cfg.Parts = map[string]bool{}
	for _, p := range splitList(*parts) {
		if !contains(allParts, p) {
			return cfg, fmt.Errorf("-parts: unknown benchmark %q (want %s)", p, strings.Join(allParts, ","))
		}
		cfg.Parts[p] = true
	}
	for _, h := range splitList(*hosts) {
		var n int
		if _, err := fmt.Sscan(h, &n); err != nil || n < 1 {
			return cfg, fmt.Errorf("-hosts: bad count %q", h)
		}
		cfg.Hosts = append(cfg.Hosts, n)
	}
	for _, m := range splitList(*modes) {
		if !contains([]string{ModeCentral, ModeDoubling, ModePipelined}, m) {
			return cfg, fmt.Errorf("-modes: unknown mode %q", m)
		}
		cfg.Modes = append(cfg.Modes, m)
	}
	var err error
	if cfg.Rows, err = parseRows(*rows); err != nil {
		return cfg, fmt.Errorf("-rows: %w", err)
	}
	for _, tl := range splitList(*tools) {
		if !contains(allTools, tl) {
			return cfg, fmt.Errorf("-tools: unknown tool %q (want %s)", tl, strings.Join(allTools, ","))
		}
		cfg.Tools = append(cfg.Tools, tl)
	}
	if cfg.Repeat < 1 {
		return cfg, fmt.Errorf("-repeat %d: want 1 or more", cfg.Repeat)
	}
	if cfg.E2EFiles < 1 {
		return cfg, fmt.Errorf("-e2e-files %d: want 1 or more", cfg.E2EFiles)
	}
	for i := range cfg.Rows {
		cfg.Rows[i].Files = cfg.E2EFiles
	}
	if cfg.SlowFactor < 1 {
		return cfg, fmt.Errorf("-slow-factor %d: want 1 or more", cfg.SlowFactor)
	}
	if cfg.SlowFirst && cfg.SlowLast {
		return cfg, errors.New("-slow-first and -slow-last: the slow host claims first or last, give one")
	}
	if cfg.FanSize, err = parseSize(*fanSize); err != nil {
		return cfg, fmt.Errorf("-size: %w", err)
	}
	if cfg.Big, err = parseSize(*big); err != nil {
		return cfg, fmt.Errorf("-big: %w", err)
	}
	if cfg.Rate, err = bwlimit.Parse(cfg.BWLimit); err != nil || cfg.Rate <= 0 {
		return cfg, fmt.Errorf("-bwlimit %q: want a positive rate: %v", cfg.BWLimit, err)
	}
	return cfg, nil
}

// parseSize reads a size in rsync units (a bare number is KiB), as
// --bwlimit does, without the per-second meaning.
func parseSize(s string) (int64, error) {
	return bwlimit.Parse(s)
}

func defaultDir() string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		return "/dev/shm"
	}
	return os.TempDir()
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// bench holds what the benchmarks share: the configuration, the base
// directory and the real redis-server.
type bench struct {
	cfg    config
	redis  *redisServer
	out    io.Writer // progress lines
	deploy deployer  // starts process fleets for benchmark 1
}

func run(ctx context.Context, cfg config, stdout io.Writer) error {
	dir, err := os.MkdirTemp(cfg.Dir, "fanout-bench-")
	if err != nil {
		return fmt.Errorf("bench directory: %w", err)
	}
	cfg.Dir = dir
	if cfg.Keep {
		fmt.Fprintln(os.Stderr, "keeping", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	rs, err := startRedis(ctx, filepath.Join(dir, "redis"))
	if err != nil {
		return err
	}
	defer rs.Stop()
	b := &bench{cfg: cfg, redis: rs, out: os.Stderr, deploy: processDeployer(cfg.Bin)}
	var t Table
	started := time.Now()
	steps := []struct {
		part string
		run  func(context.Context, *Table) error
	}{
		{"e2e", b.e2e},
		{"fanout", b.fanout},
		{"big", b.profiled(b.bigFile)},
		{"small", b.profiled(b.smallFiles)},
		{"redis", b.redisCost},
	}
	var errs []error
	for _, s := range steps {
		if !cfg.Parts[s.part] {
			continue
		}
		fmt.Fprintf(b.out, "bench: %s ...\n", s.part)
		t0 := time.Now()
		if err := s.run(ctx, &t); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s.part, err))
			t.Note("%s: FAILED: %v", s.part, err)
			if ctx.Err() != nil {
				break
			}
		}
		fmt.Fprintf(b.out, "bench: %s took %s\n", s.part, seconds(time.Since(t0)))
	}
	t.Note("machine: %d cores (GOMAXPROCS %d), %s/%s, %s; roots under %s; whole run %s.",
		runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH, runtime.Version(), filepath.Dir(dir), seconds(time.Since(started)))
	text := t.Markdown()
	fmt.Fprint(stdout, text)
	if cfg.Out != "" {
		if err := os.WriteFile(cfg.Out, []byte(text), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("write -out: %w", err))
		}
	}
	return errors.Join(errs...)
}

// profiled wraps a benchmark with a CPU profile of this process when
// -cpuprofile is set.
func (b *bench) profiled(f func(context.Context, *Table) error) func(context.Context, *Table) error {
	return func(ctx context.Context, t *Table) error {
		if b.cfg.CPUProfile == "" {
			return f(ctx, t)
		}
		pf, err := os.Create(b.cfg.CPUProfile)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
		return f(ctx, t)
	}
}
