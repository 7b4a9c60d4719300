package main

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/freeport"
)

// server is the real redis-server a simulation runs against: on a free
// loopback port, no persistence, a slow log that keeps every command
// slower than slowUS microseconds.
type server struct {
	addr string
	cmd  *exec.Cmd
}

// startServer starts redis-server with its files under dir. maxclients
// counts against the machine's open-file limit. cpus, when set, is the
// taskset CPU list redis-server runs on.
func startServer(ctx context.Context, dir string, maxclients, slowUS int, cpus string) (*server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("the simulator needs redis-server on PATH (apt-get install redis-server): %w", err)
	}
	var wrap []string
	if cpus != "" {
		taskset, err := exec.LookPath("taskset")
		if err != nil {
			return nil, fmt.Errorf("-redis-cpus needs taskset on PATH (util-linux): %w", err)
		}
		wrap = []string{taskset, "-c", cpus} // it execs redis-server: the pid stays redis-server's
	}
	port, err := freeport.Port("127.0.0.1")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("redis-server directory: %w", err)
	}
	argv := append(wrap, bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir, "--maxclients", strconv.Itoa(maxclients),
		"--slowlog-log-slower-than", strconv.Itoa(slowUS), "--slowlog-max-len", "100000")
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start redis-server: %w", err)
	}
	s := &server{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), cmd: cmd}
	rdb := redis.NewClient(&redis.Options{Addr: s.addr})
	defer rdb.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := rdb.Ping(ctx).Err()
		if err == nil {
			return s, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.stop()
			return nil, fmt.Errorf("redis-server on %s does not answer: %w", s.addr, errors.Join(err, ctx.Err()))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop kills the server and waits for it.
func (s *server) stop() {
	if s.cmd.Process != nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
	}
}

// cpu is redis-server's CPU time (user + system, every thread) so far,
// from /proc/PID/stat.
func (s *server) cpu() (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	if err != nil {
		return 0, fmt.Errorf("redis-server cpu time: %w", err)
	}
	// The fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("redis-server cpu time: short /proc/%d/stat", s.cmd.Process.Pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("redis-server cpu time: %w", err)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil // USER_HZ is 100
}

// commandStats reads INFO commandstats: calls per command ("evalsha",
// "hgetall", "slowlog|get"...) and the server's time in each, in
// microseconds. Redis counts the commands a script runs as well as the
// EVALSHA that ran it, and the EVALSHA's time includes theirs.
func commandStats(ctx context.Context, rdb *redis.Client) (calls, usec map[string]int64, err error) {
	info, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		return nil, nil, fmt.Errorf("info commandstats: %w", err)
	}
	calls, usec = map[string]int64{}, map[string]int64{}
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		name, rest, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		name = strings.TrimPrefix(name, "cmdstat_")
		for _, kv := range strings.Split(rest, ",") {
			k, v, _ := strings.Cut(kv, "=")
			if k != "calls" && k != "usec" {
				continue
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return nil, nil, fmt.Errorf("commandstats line %q: %w", sc.Text(), err)
			}
			if k == "calls" {
				calls[name] = n
			} else {
				usec[name] = n
			}
		}
	}
	return calls, usec, sc.Err()
}

// own reports whether a command is the simulator's own measuring, left out
// of the figures: INFO, CONFIG, SLOWLOG, CLIENT.
func own(cmd string) bool {
	name, _, _ := strings.Cut(cmd, "|")
	switch name {
	case "info", "config", "slowlog", "client":
		return true
	}
	return false
}

// slowEntry is the slowest call of one script or command.
type slowEntry struct {
	Name  string // script name (coord.ScriptName) or command
	Max   time.Duration
	Count int           // entries of it in the slow log
	Total time.Duration // their durations summed
}

// slowLog collects the slow log (every call slower than the threshold the
// server was started with) by draining it: SLOWLOG GET then SLOWLOG
// RESET, so the 1,024 entries it keeps are never outrun when drained
// every second.
type slowLog struct {
	byName map[string]*slowEntry
	// scripts holds the duration of every script call logged (those at
	// or above the threshold), for the quantiles of scriptQuantile.
	scripts []time.Duration
}

func newSlowLog() *slowLog { return &slowLog{byName: map[string]*slowEntry{}} }

func (l *slowLog) drain(ctx context.Context, rdb *redis.Client) error {
	entries, err := rdb.SlowLogGet(ctx, -1).Result()
	if err != nil {
		return fmt.Errorf("slowlog get: %w", err)
	}
	if err := rdb.Do(ctx, "slowlog", "reset").Err(); err != nil {
		return fmt.Errorf("slowlog reset: %w", err)
	}
	for _, e := range entries {
		if len(e.Args) == 0 {
			continue
		}
		name := strings.ToLower(e.Args[0])
		if own(name) {
			continue
		}
		if name == "evalsha" && len(e.Args) > 1 {
			if n := coord.ScriptName(e.Args[1]); n != "" {
				name = n + " script"
			}
		}
		s := l.byName[name]
		if s == nil {
			s = &slowEntry{Name: name}
			l.byName[name] = s
		}
		s.Count++
		s.Max = max(s.Max, e.Duration)
		s.Total += e.Duration
		if name == "evalsha" || name == "eval" || strings.HasSuffix(name, " script") {
			l.scripts = append(l.scripts, e.Duration)
		}
	}
	return nil
}

// scriptQuantile is the duration that a fraction 1-q of calls exceeded,
// out of calls script calls in all (q 0.999: the 99.9th percentile): the
// slow log holds every call at or above its threshold, so the quantile
// is known when more than that fraction was logged; ok is false when it
// lies below the threshold.
func (l *slowLog) scriptQuantile(q float64, calls int64) (d time.Duration, ok bool) {
	k := int(math.Ceil(float64(calls)*(1-q) - 1e-6)) // the k-th slowest (1-q is inexact)
	if k < 1 || k > len(l.scripts) {
		return 0, false
	}
	sorted := slices.Clone(l.scripts)
	slices.SortFunc(sorted, func(a, b time.Duration) int { return cmp.Compare(b, a) })
	return sorted[k-1], true
}

// slowest returns the entries, slowest first.
func (l *slowLog) slowest() []slowEntry {
	out := make([]slowEntry, 0, len(l.byName))
	for _, e := range l.byName {
		out = append(out, *e)
	}
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j].Max > out[i].Max {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}
