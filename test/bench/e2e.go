package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Benchmark 1, end to end: what an operator sees. For each row (N hosts,
// a fresh file of S bytes, every link at B, optionally one slow host) each
// tool distributes the same file over the same links:
//
//   - fanout: a master and N minions with default flags, each a process in
//     its own network namespace of the shared testbed (netbed.sh); time
//     zero is the Redis TIME of the SET task (one MULTI with it), the end
//     the generation's done_at (Redis time);
//   - bittorrent: aria2c and opentracker as ../shared/netbed/bittorrent-netbed.sh
//     runs them; time zero is mktorrent's start, the end the last leecher's
//     completion hook;
//   - seed002: the original scripts' algorithm as ../shared/netbed/seed002-netbed.sh
//     runs it (rsync daemons, SPOP synchronize_queue, 0.2 s polling); time
//     zero is the minions' start, the end the last one's return.
//
// Without network namespaces (not root, no netbed.sh) the fanout rows fall
// back to loopback with --bwlimit on every host, labelled as such, and the
// other tools are not run.

// The tools of benchmark 1.
const (
	ToolFanout     = "fanout"
	ToolBitTorrent = "bittorrent"
	ToolSeed002    = "seed002"
)

var allTools = []string{ToolFanout, ToolBitTorrent, ToolSeed002}

// Kinds of slow host in a row.
const (
	SlowBoth   = "slow"   // one host's link at B/factor in both directions
	SlowUpload = "slowup" // one host's upload alone at B/factor
)

// defaultRows are issue 10's rows.
const defaultRows = "16:32M:16M,32:64M:16M,32:16M:4M,16:32M:16M:slow,16:32M:16M:slowup"

// e2eRow is one row of benchmark 1.
type e2eRow struct {
	N     int
	Size  int64  // S
	Rate  int64  // B, bytes per second
	Slow  string // "", SlowBoth or SlowUpload
	Files int    // S in this many files of S/Files (-e2e-files); 0 or 1: one file
}

// files names the row's files under the task, each with its size: one
// model.bin, or Files parts of a tree (the last takes what does not
// divide).
func (r e2eRow) files() (names []string, sizes []int64) {
	if r.Files <= 1 {
		return []string{"model.bin"}, []int64{r.Size}
	}
	each := r.Size / int64(r.Files)
	for i := range r.Files {
		names = append(names, fmt.Sprintf("tree/part-%03d.bin", i))
		sizes = append(sizes, each)
	}
	sizes[r.Files-1] += r.Size - each*int64(r.Files)
	return names, sizes
}

// parseRows reads "N:S:B[:slow|:slowup]" items separated by commas, sizes
// and rates in rsync units (32M, 16M).
func parseRows(s string) ([]e2eRow, error) {
	var rows []e2eRow
	for _, item := range splitList(s) {
		f := strings.Split(item, ":")
		if len(f) < 3 || len(f) > 4 {
			return nil, fmt.Errorf("row %q: want N:SIZE:RATE[:slow|:slowup]", item)
		}
		var r e2eRow
		n, err := strconv.Atoi(f[0])
		if err != nil || n < 1 || n > 250 {
			return nil, fmt.Errorf("row %q: host count %q: want 1..250 (the testbed's /24)", item, f[0])
		}
		r.N = n
		if r.Size, err = parseSize(f[1]); err != nil || r.Size <= 0 {
			return nil, fmt.Errorf("row %q: size %q: want a positive size: %v", item, f[1], err)
		}
		if r.Rate, err = parseSize(f[2]); err != nil || r.Rate <= 0 {
			return nil, fmt.Errorf("row %q: rate %q: want a positive rate: %v", item, f[2], err)
		}
		if len(f) == 4 {
			if f[3] != SlowBoth && f[3] != SlowUpload {
				return nil, fmt.Errorf("row %q: %q: want %s or %s", item, f[3], SlowBoth, SlowUpload)
			}
			r.Slow = f[3]
		}
		rows = append(rows, r)
	}
	if len(rows) == 0 {
		return nil, errors.New("no rows")
	}
	return rows, nil
}

// Label names the row in the table.
func (r e2eRow) Label(slowHost, factor int) string {
	s := fmt.Sprintf("N=%d, %s, %s/s", r.N, sizeString(r.Size), sizeString(r.Rate))
	if r.Files > 1 {
		s += fmt.Sprintf(" in %d files", r.Files)
	}
	switch r.Slow {
	case SlowBoth:
		s += fmt.Sprintf(", host %d at B/%d", slowHost, factor)
	case SlowUpload:
		s += fmt.Sprintf(", host %d's upload at B/%d", slowHost, factor)
	}
	return s
}

// slug names the row's directory.
func (r e2eRow) slug() string {
	s := fmt.Sprintf("n%d-%d-%d%s", r.N, r.Size>>20, r.Rate>>20, r.Slow)
	if r.Files > 1 {
		s += fmt.Sprintf("-f%d", r.Files)
	}
	return s
}

// toolRun is one tool's distribution in one row.
type toolRun struct {
	Total   time.Duration         // time zero → every host holds the file
	Hosts   map[int]time.Duration // host (1..N) → its own finish, from time zero
	Detail  string                // breakdown printed after the figure
	CPU     time.Duration         // CPU time of the tool's processes over the run; 0: not measured
	Foreign float64               // share of the cores other people's processes used over the run
	Command string
}

// notApplicable marks a tool that cannot run in this setting; the row
// says why instead of failing the benchmark.
type notApplicable struct{ why string }

func (e notApplicable) Error() string { return "n/a: " + e.why }

// headline is the figure a run is judged by: the time for all hosts, or
// in a row with a slow host (both directions) the other hosts' last finish.
func headline(row e2eRow, slowHost int, run toolRun) time.Duration {
	if row.Slow != SlowBoth {
		return run.Total
	}
	others := time.Duration(0)
	for h, d := range run.Hosts {
		if h != slowHost {
			others = max(others, d)
		}
	}
	return others
}

// median returns the run whose headline is the median (the lower of the
// middle two), with the headline's range over all runs.
func median(row e2eRow, slowHost int, runs []toolRun) (mid toolRun, lo, hi time.Duration) {
	sorted := append([]toolRun(nil), runs...)
	sort.SliceStable(sorted, func(i, j int) bool { return headline(row, slowHost, sorted[i]) < headline(row, slowHost, sorted[j]) })
	return sorted[(len(sorted)-1)/2], headline(row, slowHost, sorted[0]), headline(row, slowHost, sorted[len(sorted)-1])
}

// e2eCells renders runs (repetitions of one measurement) as the figure and
// ratio cells: the median run, and the range when there are several.
// Uniform rows give the time for all N hosts; a row with a slow host (both
// directions) gives the other hosts' last finish against S/B and the slow
// host's against its own floor, S/(B/factor); a slow uploader's row gives
// all N against S/B.
func e2eCells(row e2eRow, slowHost, factor int, runs []toolRun) (figure, ratio string) {
	ideal := Ideal(row.Size, row.Rate)
	run, lo, hi := median(row, slowHost, runs)
	var fig []string
	if len(runs) > 1 {
		fig = append(fig, fmt.Sprintf("median of %d", len(runs)))
	}
	switch row.Slow {
	case SlowBoth:
		others := headline(row, slowHost, run)
		slow := run.Hosts[slowHost]
		floor := Ideal(row.Size, row.Rate/int64(factor))
		fig = append(fig, fmt.Sprintf("other %d: last at %s; host %d at %s; all done %s", row.N-1, seconds(others), slowHost, seconds(slow), seconds(run.Total)))
		ratio = fmt.Sprintf("other %d: %.2f × S/B; host %d: %.2f × its floor S/(B/%d) = %s", row.N-1, Ratio(others, ideal), slowHost, Ratio(slow, floor), factor, seconds(floor))
	case SlowUpload:
		fig = append(fig, fmt.Sprintf("all %d: %s (host %d at %s)", row.N, seconds(run.Total), slowHost, seconds(run.Hosts[slowHost])))
		ratio = fmt.Sprintf("%.2f × S/B", Ratio(run.Total, ideal))
	default:
		fig = append(fig, seconds(run.Total))
		ratio = fmt.Sprintf("%.2f × S/B", Ratio(run.Total, ideal))
	}
	if len(runs) > 1 {
		ratio += fmt.Sprintf(" (range %.2f–%.2f)", Ratio(lo, ideal), Ratio(hi, ideal))
	}
	if run.Detail != "" {
		fig = append(fig, run.Detail)
	}
	if run.CPU > 0 {
		fig = append(fig, fmt.Sprintf("%.1f CPU-s/GiB delivered", cpuPerGiB(run.CPU, int64(row.N)*row.Size)))
	}
	return strings.Join(fig, "; "), ratio
}

// cpuPerGiB is CPU seconds per GiB of bytes delivered.
func cpuPerGiB(cpu time.Duration, delivered int64) float64 {
	if delivered <= 0 {
		return 0
	}
	return cpu.Seconds() / (float64(delivered) / (1 << 30))
}

// e2eEnv is what the tools of one row share.
type e2eEnv struct {
	row      e2eRow
	dir      string       // the row's directory
	runDir   string       // this run's directory: every run starts from empty roots and state
	data     string       // the row's files' directory; each tool copies them into its source (see e2eRow.files)
	redis    *redisServer // bound to the testbed's root address, or loopback
	bed      *netbed      // nil: fallback on loopback, with the tool's own limiter
	slowHost int
	factor   int
}

// e2e is benchmark 1: every row, every tool.
func (b *bench) e2e(ctx context.Context, t *Table) error {
	script, why := findNetbed(ctx, b.cfg.Netbed)
	label := "1 end to end, netbed"
	if why != nil {
		label = "1 end to end, FALLBACK --bwlimit"
		fmt.Fprintf(b.out, "bench: no testbed (%v): fanout rows fall back to --bwlimit on loopback\n", why)
	}
	var errs []error
	for _, row := range b.cfg.Rows {
		if err := b.e2eRow(ctx, t, label, row, script); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", row.Label(b.cfg.SlowHost, b.cfg.SlowFactor), err))
		}
		if ctx.Err() != nil {
			break
		}
	}
	if why == nil {
		t.Note("1: end to end on the shared testbed %s: host i is network namespace fbI (10.250.0.(i+2)), the source (fanout's master, the seeder, seed002's first rsync daemon) is fb0, "+
			"each link shaped by tc tbf to B in both directions, Redis (and the tracker) in the root namespace on %s; no tool's own limiter. One fresh pseudo-random file per row, the same bytes for every tool; roots on %s. "+
			"fanout: default flags apart from the addresses, state and roots in a new directory (hash cache cold); time from the Redis TIME of the SET task (one MULTI) to the generation's done_at (Redis time); "+
			"per host, its finish event. bittorrent: from mktorrent's start to the last leecher's completion hook, leaving out the script's 2 s for the seeder to announce. "+
			"seed002: from the minions' start to the last one's return. CPU-s/GiB: utime+stime of the tool's processes over the run (/proc/PID/stat) per GiB delivered (N × S).",
			script, netbedRootIP, b.cfg.Dir)
	} else {
		t.Note("1: FALLBACK, no testbed (%v): fanout on loopback with --bwlimit B on every host (B/%d on the slow host), the tool's own token bucket, not a NIC; "+
			"bittorrent and seed002 need the testbed. Times as on the testbed: SET task (Redis TIME) to done_at.", why, b.cfg.SlowFactor)
	}
	return errors.Join(errs...)
}

// e2eRow runs one row: the testbed up (and always down), a Redis, the
// file, then each tool in turn.
func (b *bench) e2eRow(ctx context.Context, t *Table, label string, row e2eRow, script string) (err error) {
	env := &e2eEnv{row: row, dir: filepath.Join(b.cfg.Dir, "e2e", row.slug()), slowHost: b.cfg.SlowHost, factor: b.cfg.SlowFactor}
	if !b.cfg.Keep {
		defer os.RemoveAll(env.dir)
	}
	if row.Slow != "" && (b.cfg.SlowHost < 1 || b.cfg.SlowHost > row.N) {
		return fmt.Errorf("-slow-host %d: not one of hosts 1..%d", b.cfg.SlowHost, row.N)
	}
	host := "127.0.0.1"
	var shaping []string
	if script != "" {
		env.bed = &netbed{script: script, n: row.N, bw: row.Rate, log: b.out}
		defer func() {
			if derr := env.bed.down(); derr != nil {
				err = errors.Join(err, derr)
			}
		}()
		fmt.Fprintf(b.out, "bench: netbed up %d hosts at %s/s\n", row.N, sizeString(row.Rate))
		if err := env.bed.up(ctx); err != nil {
			return err
		}
		if row.Slow != "" {
			if shaping, err = env.bed.shape(ctx, b.cfg.SlowHost, row.Rate/int64(b.cfg.SlowFactor), true, row.Slow == SlowBoth); err != nil {
				return err
			}
		}
		host = netbedRootIP
	}
	rs, err := startRedisAt(ctx, filepath.Join(env.dir, "redis"), host)
	if err != nil {
		return err
	}
	defer rs.Stop()
	env.redis = rs
	env.data = filepath.Join(env.dir, "data")
	names, sizes := row.files()
	for i, name := range names {
		if err := writeBigFile(filepath.Join(env.data, name), sizes[i], uint64(row.Size>>20)+uint64(row.N)+uint64(i)<<8); err != nil {
			return err
		}
	}
	runners := map[string]func(context.Context, *e2eEnv) (toolRun, error){
		ToolFanout: b.e2eFanout, ToolBitTorrent: b.e2eBitTorrent, ToolSeed002: b.e2eSeed002,
	}
	var errs []error
	for _, tool := range b.cfg.Tools {
		r := Row{Bench: label, Case: row.Label(b.cfg.SlowHost, b.cfg.SlowFactor) + ": " + tool, Command: tool}
		// Runs during which other people's processes used more than
		// quietBusy of the cores are run again, up to maxRetries times;
		// when clean runs are still short, the busy ones fill in, flagged.
		var runs, busy []toolRun
		for k := 0; len(runs) < b.cfg.Repeat && k < b.cfg.Repeat+maxRetries; k++ {
			fmt.Fprintf(b.out, "bench: %s: %s (run %d, %d of %d clean so far) ...\n", row.Label(b.cfg.SlowHost, b.cfg.SlowFactor), tool, k+1, len(runs), b.cfg.Repeat)
			if _, err := waitQuiet(ctx, b.cfg.QuietWait, b.out); err != nil {
				return errors.Join(append(errs, err)...)
			}
			if err := flushRedis(ctx, rs); err != nil {
				return errors.Join(append(errs, err)...)
			}
			env.runDir = filepath.Join(env.dir, fmt.Sprintf("%s-%d", tool, k+1))
			tctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
			run, err := runners[tool](tctx, env)
			cancel()
			if !b.cfg.Keep {
				os.RemoveAll(env.runDir)
			}
			if run.Command != "" {
				r.Command = run.Command
			}
			var na notApplicable
			if errors.As(err, &na) {
				r.Figure, r.Ratio = "n/a", na.why
				break
			}
			if err != nil {
				r.Figure = fmt.Sprintf("failed (run %d): %v", k+1, err)
				errs = append(errs, fmt.Errorf("%s: %w", tool, err))
				break
			}
			f, q := e2eCells(row, b.cfg.SlowHost, b.cfg.SlowFactor, []toolRun{run})
			fmt.Fprintf(b.out, "bench:   %s | %s | other processes %.0f%% of the cores\n", f, q, 100*run.Foreign)
			if run.Foreign > quietBusy {
				run.Detail = strings.TrimPrefix(run.Detail+fmt.Sprintf("; NOT QUIET: other processes used %.0f%% of the cores", 100*run.Foreign), "; ")
				busy = append(busy, run)
			} else {
				runs = append(runs, run)
			}
			if ctx.Err() != nil {
				break
			}
		}
		for len(runs) < b.cfg.Repeat && len(busy) > 0 {
			runs, busy = append(runs, busy[0]), busy[1:]
		}
		if r.Figure == "" && len(runs) > 0 {
			r.Figure, r.Ratio = e2eCells(row, b.cfg.SlowHost, b.cfg.SlowFactor, runs)
		}
		t.Add(r)
		if ctx.Err() != nil {
			break
		}
	}
	if len(shaping) > 0 {
		t.Note("1 %s: after netbed.sh up: %s.", row.Label(b.cfg.SlowHost, b.cfg.SlowFactor), strings.Join(shaping, "; "))
	}
	return errors.Join(errs...)
}

// copyFile copies src to dst (a new file), creating dst's directory.
func copyFile(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// sameFile reports an error unless a and b hold the same bytes.
func sameFile(a, b string) error {
	fa, err := os.Open(a)
	if err != nil {
		return err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return err
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); ; {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return fmt.Errorf("%s differs from %s at or after byte %d", b, a, off)
		}
		off += int64(na)
		aEnd := ea == io.EOF || ea == io.ErrUnexpectedEOF
		bEnd := eb == io.EOF || eb == io.ErrUnexpectedEOF
		switch {
		case aEnd && bEnd:
			return nil
		case ea != nil && !aEnd:
			return ea
		case eb != nil && !bEnd:
			return eb
		case aEnd != bEnd:
			return fmt.Errorf("%s and %s differ in length", a, b)
		}
	}
}

// machineTimes is the first line of /proc/stat: time of all cores since
// boot, in total, busy (everything but idle and iowait) and in softirq
// (where the kernel does most of its networking).
type machineTimes struct {
	busy, total, softirq time.Duration
}

func machineCPU() (machineTimes, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return machineTimes{}, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return machineTimes{}, errors.New("empty /proc/stat")
	}
	return parseProcStat(sc.Text())
}

// parseProcStat reads "cpu  user nice system idle iowait irq softirq steal ...".
func parseProcStat(line string) (machineTimes, error) {
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return machineTimes{}, fmt.Errorf("/proc/stat line %q", line)
	}
	var sum, idle, soft int64
	for i, v := range f[1:] {
		if i >= 8 { // guest time is counted in user already
			break
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return machineTimes{}, fmt.Errorf("/proc/stat line %q: %w", line, err)
		}
		sum += n
		switch i {
		case 3, 4:
			idle += n
		case 6:
			soft += n
		}
	}
	tick := 10 * time.Millisecond // USER_HZ
	return machineTimes{busy: time.Duration(sum-idle) * tick, total: time.Duration(sum) * tick, softirq: time.Duration(soft) * tick}, nil
}

// cpuMeter measures the CPU time of a set of processes and of the whole
// machine between start and stop.
type cpuMeter struct {
	pids        []int
	user, sys   map[int]time.Duration
	machine     machineTimes
	User, Sys   time.Duration // the processes' utime and stime over the interval
	Procs       time.Duration // User + Sys
	MachineUse  float64       // busy share of all cores over the interval
	SoftirqUse  float64       // softirq share of all cores over the interval
	MachineBusy time.Duration // busy time of all cores over the interval
}

func startCPU(pids []int) *cpuMeter {
	m := &cpuMeter{pids: pids, user: map[int]time.Duration{}, sys: map[int]time.Duration{}}
	for _, p := range pids {
		m.user[p], m.sys[p], _ = userSys(p)
	}
	m.machine, _ = machineCPU()
	return m
}

// stop ends the interval; a process that has exited counts what was read
// at the start only.
func (m *cpuMeter) stop() {
	for _, p := range m.pids {
		if u, s, err := userSys(p); err == nil {
			m.User += u - m.user[p]
			m.Sys += s - m.sys[p]
		}
	}
	m.Procs = m.User + m.Sys
	end, err := machineCPU()
	if all := end.total - m.machine.total; err == nil && all > 0 {
		m.MachineBusy = end.busy - m.machine.busy
		m.MachineUse = float64(m.MachineBusy) / float64(all)
		m.SoftirqUse = float64(end.softirq-m.machine.softirq) / float64(all)
	}
}

// hostIndex reads the host number out of a name such as "minion-07" or "h7".
func hostIndex(name string) (int, bool) {
	i := len(name)
	for i > 0 && name[i-1] >= '0' && name[i-1] <= '9' {
		i--
	}
	n, err := strconv.Atoi(name[i:])
	return n, err == nil
}

// sortedHosts lists a run's hosts in order, for messages.
func sortedHosts(m map[int]time.Duration) []int {
	out := make([]int, 0, len(m))
	for h := range m {
		out = append(out, h)
	}
	sort.Ints(out)
	return out
}

// maxRetries bounds the runs made again because other processes were busy.
const maxRetries = 4

// quietBusy is the busy share of the cores below which the machine counts
// as quiet: the benchmark shares it with nobody then.
const quietBusy = 0.15

// waitQuiet waits, up to limit, for a second in which the machine's cores
// are less than quietBusy busy, and returns the last second's share. On a
// shared machine (2 cores, other people's tests) a figure taken while
// something else runs measures that too; the row says so when the wait
// ran out.
func waitQuiet(ctx context.Context, limit time.Duration, log io.Writer) (float64, error) {
	deadline := time.Now().Add(limit)
	said := false
	for {
		m := startCPU(nil)
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(time.Second):
		}
		m.stop()
		if m.MachineUse < quietBusy || !time.Now().Before(deadline) {
			return m.MachineUse, nil
		}
		if !said {
			fmt.Fprintf(log, "bench: the machine is busy (%.0f%% of its cores); waiting up to %s for it to be quiet\n", 100*m.MachineUse, time.Until(deadline).Round(time.Second))
			said = true
		}
	}
}

// foreignMeter measures the CPU time of the processes that are not this
// benchmark's (nor its children's), kernel threads left out, over an
// interval: other people's tests on a shared machine. It undercounts: a
// process that ends within the interval is not seen (its parent's cutime
// cannot be used, as it also holds what a long-lived child used before the
// interval).
type foreignMeter struct {
	start map[int]time.Duration
	at    time.Time
}

func startForeign() *foreignMeter {
	return &foreignMeter{start: foreignCPU(), at: time.Now()}
}

// stop returns the foreign processes' CPU time over the interval as a
// share of all cores.
func (m *foreignMeter) stop() float64 {
	end := foreignCPU()
	var used time.Duration
	for pid, c := range end {
		used += c - m.start[pid] // a new process: all of it is in the interval
	}
	wall := time.Since(m.at)
	if wall <= 0 || used < 0 {
		return 0
	}
	return float64(used) / float64(wall) / float64(runtime.NumCPU())
}

// foreignCPU reads utime+stime of every process that does
// not descend from this one, by pid; kernel threads (children of kthreadd)
// are left out, as they do the benchmark's own networking too.
func foreignCPU() map[int]time.Duration {
	entries, _ := os.ReadDir("/proc")
	type stat struct {
		ppid int
		cpu  time.Duration
	}
	all := map[int]stat{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		ppid, cpu, ok := parsePidStat(string(b))
		if ok {
			all[pid] = stat{ppid, cpu}
		}
	}
	self := os.Getpid()
	out := map[int]time.Duration{}
	for pid, st := range all {
		mine := false
		for p, hops := pid, 0; p > 1 && hops < 64; p, hops = all[p].ppid, hops+1 {
			if p == self || p == 2 || all[p].ppid == 2 {
				mine = true // this benchmark's, or a kernel thread
				break
			}
		}
		if !mine {
			out[pid] = st.cpu
		}
	}
	return out
}

// parsePidStat reads the parent pid and utime+stime from the text of
// /proc/PID/stat.
func parsePidStat(s string) (ppid int, cpu time.Duration, ok bool) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 15 {
		return 0, 0, false
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return 0, 0, false
	}
	var ticks int64
	for _, v := range f[11:13] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, 0, false
		}
		ticks += n
	}
	return ppid, time.Duration(ticks) * 10 * time.Millisecond, true
}
