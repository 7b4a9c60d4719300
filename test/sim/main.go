// Command sim runs fanout's real coordination for thousands of simulated
// hosts against a real redis-server and prints one markdown table: for
// each fleet size N, the time from SET task to done as a multiple of S/B,
// redis-server's CPU for the task, commands per host, the slowest script
// in the slow log, leases expired, and redis-server's CPU for the fleet
// idle.
//
// Every host is a real minion.Minion (internal/minion: the poll loop,
// heartbeats, claims, lease renewal, progress reports, the swarm's extra
// claims, offers, finish) and the master is a real master.Master, all
// speaking the real protocol (internal/coord and its Lua scripts) over a
// few shared connection pools. Only the data plane is modelled
// (minion.Model): a pull takes the time its bytes would take on links of
// B bytes a second, and nothing is moved or written. Run it with "make
// sim" (SIMFLAGS="-hosts 1000,10000" ...); docs/PERFORMANCE.md holds the
// latest table.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fanout/fanout/internal/bwlimit"
	"github.com/fanout/fanout/internal/minion"
)

// config is the command line.
type config struct {
	Hosts []int
	SB    time.Duration // S/B: how long one host takes to receive the data at its link's rate
	Size  int64         // S, in bytes (only the progress reports show it)
	// Chunk is the bytes a relay holds back of the chunk it is receiving
	// (default minion.RelayHoldBack: a partial source streams a chunk on
	// as it arrives, all but a step not yet written and the tail it holds
	// until it verified the chunk).
	Chunk      int64
	Poll       time.Duration
	Heartbeat  time.Duration
	Lease      time.Duration
	HostGrace  time.Duration
	Sources    int
	Uploads    int
	Pipeline   bool
	Hop        time.Duration // a manifest request's latency
	Stall      time.Duration
	Spread     time.Duration // hosts start at random moments over this
	Clients    int           // shared go-redis clients
	Pool       int           // connections of each
	SlowUS     int           // slowlog-log-slower-than, µs
	RedisCPUs  string        // taskset CPU list for redis-server ("": any)
	IdleWindow time.Duration
	Settle     time.Duration
	Task       bool // distribute a generation (false: measure the fleet idle only)
	Timeout    time.Duration
	Dir        string
	Out        string
}

const usage = `usage: go run ./test/sim [flags]    (or: make sim SIMFLAGS="...")

Runs fanout's real coordination code (internal/coord and its Lua scripts,
internal/minion's poll loop, heartbeats, claims, leases and swarm, and
internal/master) for N simulated hosts against a real redis-server it
starts, with the data plane modelled by bandwidth: a pull takes the time
its bytes would take on links of B bytes a second, and a pipelined partial
source delivers no faster than its own source. For each N it prints the
time from SET task to done as a multiple of S/B, redis-server's CPU for the
task, commands per host, the slowest script in SLOWLOG, leases expired, and
redis-server's CPU with the N hosts idle. Needs redis-server on PATH.

Flags (defaults are fanout's own where a flag of the daemons exists):
`

func parseFlags(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	var cfg config
	hosts := fs.String("hosts", "1000,10000,20000", "fleet sizes N to simulate, comma-separated")
	fs.DurationVar(&cfg.SB, "sb", 60*time.Second, "S/B: the time one host takes to receive the data at its link's rate B")
	chunkSize := fs.String("chunk", strconv.Itoa(minion.RelayHoldBack>>10)+"K", "the bytes of a chunk being received that a relay holds back from the hosts streaming from it (rsync units; default minion.RelayHoldBack, the real relay's: a step not yet written and the unverified tail; a relay that served only whole verified chunks held back the chunker's average, 128K): each link of a pipelined chain adds its time at B")
	size := fs.String("size", "1G", "S, the data size (rsync units; with -sb it gives B; only progress reports show it)")
	fs.DurationVar(&cfg.Poll, "poll", time.Second, "--poll of every host")
	fs.DurationVar(&cfg.Heartbeat, "heartbeat", 10*time.Second, "--heartbeat of every minion")
	fs.DurationVar(&cfg.Lease, "lease", 15*time.Second, "--lease")
	fs.DurationVar(&cfg.HostGrace, "host-grace", 30*time.Second, "--host-grace")
	fs.IntVar(&cfg.Sources, "sources", 3, "--sources of every minion")
	fs.IntVar(&cfg.Uploads, "max-uploads", 1, "--max-uploads of every host")
	fs.BoolVar(&cfg.Pipeline, "pipeline", true, "--pipeline of every minion")
	fs.DurationVar(&cfg.Hop, "hop", 5*time.Millisecond, "modelled latency of a manifest request to a source (round trip and the diff of the host's tree)")
	fs.DurationVar(&cfg.Stall, "stall", 30*time.Second, "a modelled pull that receives nothing this long fails (--stall-timeout), unless every source is alive and has nothing it lacks (it waits for its own, as a real relay deep in a chain does)")
	fs.DurationVar(&cfg.Spread, "spread", -1, "hosts start at random moments over this long (default: one --heartbeat, so heartbeats are spread evenly)")
	fs.IntVar(&cfg.Clients, "clients", 8, "go-redis clients the hosts share")
	fs.IntVar(&cfg.Pool, "pool", 16, "connections of each shared client (redis-server's clients count against the open-file limit)")
	fs.StringVar(&cfg.RedisCPUs, "redis-cpus", "", "run redis-server on these CPUs only (taskset -c LIST, e.g. 0), and the simulator on the others (taskset -c 1- go run ./test/sim ...): SLOWLOG's wall times then measure the scripts, not the simulator's load")
	fs.IntVar(&cfg.SlowUS, "slowlog-us", 100, "slowlog-log-slower-than, µs: SLOWLOG keeps every call slower than this")
	fs.DurationVar(&cfg.IdleWindow, "idle-window", time.Minute, "window over which idle Redis CPU is measured after the task (0: not measured)")
	fs.DurationVar(&cfg.Settle, "settle", -1, "wait after done before the idle window (default: two --heartbeat)")
	fs.DurationVar(&cfg.Timeout, "timeout", 30*time.Minute, "limit on one generation")
	fs.BoolVar(&cfg.Task, "task", true, "distribute a generation; -task=false measures the registered fleet idle only (no task ever set)")
	fs.StringVar(&cfg.Dir, "dir", os.TempDir(), "base directory (the master's tree, redis-server's directory)")
	fs.StringVar(&cfg.Out, "out", "", "also write the table (markdown) to this file")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments %q (see -help)", fs.Args())
	}
	for _, h := range strings.Split(*hosts, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(h))
		if err != nil || n < 1 {
			return cfg, fmt.Errorf("-hosts: %q is not a host count >= 1 (e.g. -hosts 1000,10000)", h)
		}
		cfg.Hosts = append(cfg.Hosts, n)
	}
	var err error
	if cfg.Chunk, err = bwlimit.Parse(*chunkSize); err != nil || cfg.Chunk <= 0 {
		return cfg, fmt.Errorf("-chunk %q: want a positive size such as 128K: %v", *chunkSize, err)
	}
	if cfg.Size, err = bwlimit.Parse(*size); err != nil || cfg.Size <= 0 {
		return cfg, fmt.Errorf("-size %q: want a positive size such as 1G: %v", *size, err)
	}
	switch {
	case cfg.SB <= 0:
		return cfg, fmt.Errorf("-sb %s: want a positive duration such as 60s", cfg.SB)
	case cfg.Clients < 1 || cfg.Pool < 1:
		return cfg, fmt.Errorf("-clients %d -pool %d: want 1 or more of each", cfg.Clients, cfg.Pool)
	case cfg.Poll <= 0 || cfg.Heartbeat <= 0 || cfg.Lease <= 0 || cfg.HostGrace <= 0:
		return cfg, errors.New("-poll, -heartbeat, -lease and -host-grace must be positive")
	case cfg.Uploads < 1:
		return cfg, fmt.Errorf("-max-uploads %d: the simulated hosts must serve (1 or more)", cfg.Uploads)
	}
	if cfg.Spread < 0 {
		cfg.Spread = cfg.Heartbeat
	}
	if cfg.Settle < 0 {
		cfg.Settle = 2 * cfg.Heartbeat
	}
	return cfg, nil
}

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sim:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err = run(ctx, cfg, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "sim:", err)
		os.Exit(1)
	}
}

// run simulates each fleet size in turn and prints the table.
func run(ctx context.Context, cfg config, stdout, progress io.Writer) error {
	started := time.Now()
	var results []result
	var errs []error
	for _, n := range cfg.Hosts {
		r, err := simulate(ctx, cfg, n, progress)
		if r.NotDone {
			results = append(results, r) // its figures so far, marked
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("N=%d: %w", n, err))
			for _, w := range r.Warnings {
				fmt.Fprintln(progress, "sim: logged:", w)
			}
			if ctx.Err() != nil {
				break
			}
			continue
		}
		results = append(results, r)
	}
	text := table(cfg, results, time.Since(started))
	fmt.Fprint(stdout, text)
	if cfg.Out != "" {
		if err := os.WriteFile(cfg.Out, []byte(text), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("write -out: %w", err))
		}
	}
	return errors.Join(errs...)
}

// table renders the results as markdown, one row per N, then notes.
func table(cfg config, rs []result, took time.Duration) string {
	var b strings.Builder
	b.WriteString("| N | SET → done | × S/B | Redis CPU per task | per 1,000 hosts | commands per host (executed) | requests per host | slowest script (SLOWLOG) | leases expired | idle Redis CPU | idle requests per host per s |\n")
	b.WriteString("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, r := range rs {
		n := float64(r.N)
		slow := "none ≥ " + strconv.Itoa(cfg.SlowUS) + " µs"
		if s := r.slowest(); s.Name != "" {
			slow = fmt.Sprintf("%s, %s ms", strings.TrimSuffix(s.Name, " script"), short(float64(s.Max.Microseconds())/1000))
		}
		idle, idleReqs := "–", "–"
		if r.IdleWindow > 0 {
			idle = fmt.Sprintf("%.1f%% of a core", 100*r.IdleCPU.Seconds()/r.IdleWindow.Seconds())
			idleReqs = short(float64(total(r.IdleReqs)) / n / r.IdleWindow.Seconds())
		}
		done, ratio := short(r.Completion.Seconds())+" s", fmt.Sprintf("%.2f", r.Ratio())
		if !cfg.Task {
			done, ratio = "no task", "–"
		}
		if r.NotDone {
			done, ratio = fmt.Sprintf("not done in %s (%d finished)", r.Completion, r.Finished), "> "+ratio
		}
		cpu, per1k, exec, reqs, leases := short(r.CPU.Seconds())+" s", short(r.CPU.Seconds()*1000/n)+" s",
			short(float64(total(r.Executed))/n), short(float64(total(r.Requests))/n), strconv.Itoa(r.Events["lease_expired"])
		if !cfg.Task {
			cpu, per1k, exec, reqs, slow, leases = "–", "–", "–", "–", "–", "–"
		}
		fmt.Fprintf(&b, "| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			r.N, done, ratio, cpu, per1k, exec, reqs, slow, leases, idle, idleReqs)
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "- Command: `go run ./test/sim %s`; S/B %s (S = %s), --poll %s, --heartbeat %s, --lease %s, --host-grace %s, --sources %d, --max-uploads %d, --pipeline=%t; a relay holds back %s of a chunk; manifest request %s; hosts started over %s; %d shared clients × %d connections; SLOWLOG threshold %d µs; idle window %s after %s.\n",
		strings.Join(os.Args[1:], " "), cfg.SB, sizeString(cfg.Size), cfg.Poll, cfg.Heartbeat, cfg.Lease, cfg.HostGrace, cfg.Sources, cfg.Uploads, cfg.Pipeline,
		sizeString(cfg.Chunk), cfg.Hop, cfg.Spread, cfg.Clients, cfg.Pool, cfg.SlowUS, cfg.IdleWindow, cfg.Settle)
	for _, r := range rs {
		n := float64(r.N)
		if !cfg.Task {
			fmt.Fprintf(&b, "- N=%d: registered in %s; no task.\n", r.N, r.Register.Round(time.Millisecond))
			if r.IdleWindow > 0 {
				fmt.Fprintf(&b, "  Idle, per host per s: requests %s; executed %s.\n",
					perCommand(r.IdleReqs, n*r.IdleWindow.Seconds(), 8), perCommand(r.IdleExec, n*r.IdleWindow.Seconds(), 8))
			}
			continue
		}
		fmt.Fprintf(&b, "- N=%d: registered in %s; SET → published %s, → first claim %s; %d finished, %d short of S; events: %s. Simulator timer lateness max %s, mean %s; load average %s.\n",
			r.N, r.Register.Round(time.Millisecond), r.Published.Round(time.Millisecond), r.FirstClaim.Round(time.Millisecond), r.Finished, r.Short, eventList(r.Events),
			r.LagMax.Round(time.Millisecond), r.LagMean.Round(100*time.Microsecond), r.Load)
		fmt.Fprintf(&b, "  Executed per host (INFO commandstats): %s.\n", perCommand(r.Executed, n, 14))
		fmt.Fprintf(&b, "  Server µs per host by command (INFO commandstats; EVALSHA includes the commands its scripts ran): %s.\n", perCommand(r.ExecUsec, n, 14))
		fmt.Fprintf(&b, "  Requests per host: %s.\n", perCommand(r.Requests, n, 14))
		var slow []string
		for i, s := range r.Slow {
			if i == 6 {
				break
			}
			slow = append(slow, fmt.Sprintf("%s max %s ms (%d calls ≥ %d µs)", s.Name, short(float64(s.Max.Microseconds())/1000), s.Count, cfg.SlowUS))
		}
		quantile := func(d time.Duration) string {
			if d < 0 {
				return fmt.Sprintf("< %d µs", cfg.SlowUS)
			}
			return fmt.Sprintf("%d µs", d.Microseconds())
		}
		fmt.Fprintf(&b, "  Script calls (SLOWLOG over INFO commandstats): p99 %s, p99.9 %s; the slowest (a stall of the machine as often as a script's own cost) in the table.\n",
			quantile(r.ScriptP99), quantile(r.ScriptP999))
		if len(slow) > 0 {
			fmt.Fprintf(&b, "  SLOWLOG: %s.\n", strings.Join(slow, "; "))
			// With -slowlog-us 0 every call is logged: where Redis spends
			// its time, by script.
			byTotal := slices.Clone(r.Slow)
			slices.SortFunc(byTotal, func(a, b slowEntry) int { return cmp.Compare(b.Total, a.Total) })
			var tot []string
			for i, s := range byTotal {
				if i == 8 {
					break
				}
				tot = append(tot, fmt.Sprintf("%s %s µs (%s calls)", s.Name, short(float64(s.Total.Microseconds())/n), short(float64(s.Count)/n)))
			}
			fmt.Fprintf(&b, "  SLOWLOG time per host, calls ≥ %d µs: %s.\n", cfg.SlowUS, strings.Join(tot, "; "))
		}
		if e := r.noise(); e.Name != "" {
			fmt.Fprintf(&b, "  Slowest call that is not a script: %s, %s ms (SLOWLOG times are wall time: a loaded machine stretches them).\n",
				e.Name, short(float64(e.Max.Microseconds())/1000))
		}
		if r.IdleWindow > 0 {
			fmt.Fprintf(&b, "  Idle, per host per s: requests %s; executed %s.\n",
				perCommand(r.IdleReqs, n*r.IdleWindow.Seconds(), 8), perCommand(r.IdleExec, n*r.IdleWindow.Seconds(), 8))
		}
		for _, w := range r.Warnings {
			fmt.Fprintf(&b, "  Logged: %s.\n", w)
		}
	}
	fmt.Fprintf(&b, "- Machine: %d cores, %s/%s, %s; the simulator and redis-server share it; whole run %s.\n",
		runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version(), took.Round(time.Second))
	return b.String()
}

// eventList prints event counts by type.
func eventList(m map[string]int) string {
	var parts []string
	for _, k := range []string{"claim", "release", "switch", "fail", "dead_source", "lease_expired", "lease_recreated", "claim_restored", "finish", "reassert"} {
		if m[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
		}
	}
	return strings.Join(parts, ", ")
}

// sizeString prints a byte count in binary units.
func sizeString(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20:
		return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d B", n)
}
