// Package fleet runs a fanout deployment as real OS processes on loopback:
// a master and minions started from the fanout-master and fanout-minion
// binaries, each with its own root, state directory and port, that tests
// can kill (SIGKILL, for real), stop, restart and partition. It is the
// harness of the fault suite.
//
// Build compiles the binaries with the race detector. A race-built
// process that hits a data race writes a report to its log and runs on,
// so the test's faults still play out; Close then fails with the report.
// Scanning the logs, rather than halting on the first race and checking
// exit codes, also catches a race in a process the test killed with
// SIGKILL, which leaves no exit code to check.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/freeport"
	"github.com/fanout/fanout/internal/redisurl"
)

// Build compiles fanout-master and fanout-minion with the race detector
// (go build -race, which needs cgo: a C compiler on PATH) from the module
// that holds moduleDir (a directory inside it) into out and returns out.
func Build(ctx context.Context, moduleDir, out string) (string, error) {
	for _, prog := range []string{"master", "minion"} {
		cmd := exec.CommandContext(ctx, "go", "build", "-race", "-o", filepath.Join(out, "fanout-"+prog), "./"+prog)
		cmd.Dir = moduleDir
		if b, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("build fanout-%s: %w\n%s", prog, err, b)
		}
	}
	return out, nil
}

// Config describes a fleet.
type Config struct {
	Dir      string // every process gets Dir/<name>/{root,state} and Dir/<name>.log
	Bin      string // directory holding fanout-master and fanout-minion
	RedisURL string
	Prefix   string   // --key-prefix
	Args     []string // flags for every process (e.g. --poll 100ms)
	// HostGrace is the --host-grace the fleet's own Coord uses to tell
	// expected hosts; zero is coord's default.
	HostGrace time.Duration
}

// Fleet is a running deployment. Close kills what is still running.
type Fleet struct {
	cfg    Config
	secret string
	// Redis is a client of the fleet's Redis, of the kind its URL names
	// (one server, Sentinel, Cluster).
	Redis redis.UniversalClient
	Coord *coord.Client

	mu    sync.Mutex
	procs []*Proc
}

// New prepares a fleet (secret file, Redis client); it starts nothing.
func New(cfg Config) (*Fleet, error) {
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	secret := filepath.Join(cfg.Dir, "secret")
	if err := os.WriteFile(secret, []byte("fleet-secret-0123456789abcdef\n"), 0o600); err != nil {
		return nil, err
	}
	target, err := redisurl.Parse(cfg.RedisURL)
	if err != nil {
		return nil, err
	}
	rdb := target.Client()
	return &Fleet{cfg: cfg, secret: secret, Redis: rdb, Coord: coord.New(rdb, coord.Config{Prefix: cfg.Prefix, DB: target.DB(), HostGrace: cfg.HostGrace})}, nil
}

// Proc is one fanout process.
type Proc struct {
	Name     string
	Root     string // its --root
	StateDir string
	Addr     string // its peer server
	Log      string // file with its stdout and stderr

	argv []string // the whole command line, wrapper included
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// StartMaster starts the master, named "master", with extra flags.
func (f *Fleet) StartMaster(ctx context.Context, extra ...string) (*Proc, error) {
	return f.start(ctx, "master", "fanout-master", nil, "", extra)
}

// StartMinion starts a minion with extra flags.
func (f *Fleet) StartMinion(ctx context.Context, name string, extra ...string) (*Proc, error) {
	return f.start(ctx, name, "fanout-minion", nil, "", extra)
}

// StartMinionWrapped starts a minion under a wrapper command, such as
// prlimit --fsize=N --.
func (f *Fleet) StartMinionWrapped(ctx context.Context, name string, wrapper []string, extra ...string) (*Proc, error) {
	return f.start(ctx, name, "fanout-minion", wrapper, "", extra)
}

// StartAt starts prog ("fanout-master" or "fanout-minion") named name under
// a wrapper command (none when empty), listening on and advertising addr
// instead of a free loopback port: a host in its own network namespace,
// started with wrapper "ip netns exec fb1", listens on that namespace's
// address. The wrapper must exec the program (as ip netns exec does), so
// that the process's pid is the program's.
func (f *Fleet) StartAt(ctx context.Context, name, prog string, wrapper []string, addr string, extra ...string) (*Proc, error) {
	if prog != "fanout-master" && prog != "fanout-minion" {
		return nil, fmt.Errorf("fleet: unknown program %q", prog)
	}
	return f.start(ctx, name, prog, wrapper, addr, extra)
}

func (f *Fleet) start(ctx context.Context, name, prog string, wrapper []string, addr string, extra []string) (*Proc, error) {
	base := filepath.Join(f.cfg.Dir, name)
	p := &Proc{Name: name, Root: filepath.Join(base, "root"), StateDir: filepath.Join(base, "state"), Log: base + ".log"}
	if err := os.MkdirAll(p.Root, 0o755); err != nil {
		return nil, err
	}
	if addr == "" {
		var err error
		if addr, err = freeport.Addr(); err != nil {
			return nil, err
		}
	}
	p.Addr = addr
	args := []string{"run", "--redis", f.cfg.RedisURL, "--key-prefix", f.cfg.Prefix, "--id", name,
		"--root", p.Root, "--state-dir", p.StateDir, "--listen", addr, "--advertise", addr,
		"--secret-file", f.secret}
	args = append(append(args, f.cfg.Args...), extra...)
	p.argv = append(append(append([]string{}, wrapper...), filepath.Join(f.cfg.Bin, prog)), args...)
	if err := p.Start(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.procs = append(f.procs, p)
	f.mu.Unlock()
	return p, nil
}

// Start starts the process (again), appending to its log.
func (p *Proc) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return fmt.Errorf("%s is running", p.Name)
	}
	log, err := os.OpenFile(p.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command(p.argv[0], p.argv[1:]...)
	cmd.Env = RaceEnv(os.Environ())
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	return nil
}

// Running reports whether the process is alive.
func (p *Proc) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Pid is the process id while it runs, 0 otherwise.
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Kill sends SIGKILL and waits for the process to die.
func (p *Proc) Kill() { p.signal(syscall.SIGKILL, 0) }

// Stop sends SIGTERM and waits up to 15 s, then kills it. It reports
// whether the process ended on SIGTERM.
func (p *Proc) Stop() bool { return p.signal(syscall.SIGTERM, 15*time.Second) }

func (p *Proc) signal(sig syscall.Signal, grace time.Duration) bool {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return true
	}
	cmd.Process.Signal(sig)
	if grace == 0 {
		<-done
		return true
	}
	select {
	case <-done:
		return true
	case <-time.After(grace):
		cmd.Process.Kill()
		<-done
		return false
	}
}

// exited reports a process of the fleet that ended by itself (not killed
// or stopped by the test), with the end of its log: waiting for it to
// register would only time out.
func (f *Fleet) exited() error {
	f.mu.Lock()
	procs := f.procs
	f.mu.Unlock()
	for _, p := range procs {
		p.mu.Lock()
		cmd, done := p.cmd, p.done
		p.mu.Unlock()
		if cmd == nil {
			continue
		}
		select {
		case <-done:
			out := p.Output()
			if len(out) > 2000 {
				out = out[len(out)-2000:]
			}
			return fmt.Errorf("%s exited by itself (%v):\n%s", p.Name, cmd.ProcessState, out)
		default:
		}
	}
	return nil
}

// Output returns the process's log so far.
func (p *Proc) Output() string {
	b, _ := os.ReadFile(p.Log)
	return string(b)
}

// Close kills every process of the fleet and closes the Redis client. It
// returns an error holding the race detector's report for each process
// whose log has one (see CheckRaces).
func (f *Fleet) Close() error {
	f.mu.Lock()
	procs := f.procs
	f.mu.Unlock()
	var errs []error
	for _, p := range procs {
		p.Kill()
		errs = append(errs, CheckRaces(p.Name, p.Output()))
	}
	f.Redis.Close()
	return errors.Join(errs...)
}

// raceWarning opens each report of the race detector; a line of '='
// closes it.
const (
	raceWarning = "WARNING: DATA RACE"
	raceEnd     = "\n=================="
)

// CheckRaces returns an error naming the process name when out, its
// output, holds a report of the race detector, and quoting the first
// report; nil when it holds none.
func CheckRaces(name, out string) error {
	n := strings.Count(out, raceWarning)
	if n == 0 {
		return nil
	}
	report := out[strings.Index(out, raceWarning):]
	if i := strings.Index(report, raceEnd); i >= 0 {
		report = report[:i]
	}
	const maxReport = 8 << 10
	if len(report) > maxReport {
		report = report[:maxReport] + "\n[...]"
	}
	return fmt.Errorf("%s: the race detector reported %d data race(s); the first:\n%s", name, n, report)
}

// RaceEnv returns env with GORACE set for a race-built process whose
// output CheckRaces reads: reports go to stderr, whatever log_path the
// caller's GORACE names, and the process runs on after one.
func RaceEnv(env []string) []string {
	gorace := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "GORACE="); ok {
			gorace = v // the last one counts, as in exec.Cmd
		}
	}
	// Later options win over the caller's.
	gorace = strings.TrimSpace(gorace + " log_path=stderr halt_on_error=0")
	return append(env[:len(env):len(env)], "GORACE="+gorace)
}

// Logs returns every process's log, for a failing test.
func (f *Fleet) Logs() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, p := range f.procs {
		fmt.Fprintf(&b, "---- %s ----\n%s\n", p.Name, p.Output())
	}
	return b.String()
}

// Set sets the task key the way an operator does.
func (f *Fleet) Set(ctx context.Context, task string) error {
	return f.Redis.Set(ctx, f.Coord.Keys().Task(), task, 0).Err()
}

// WaitRegistered waits until n minions heartbeat.
func (f *Fleet) WaitRegistered(ctx context.Context, n int) error {
	return Poll(ctx, fmt.Sprintf("%d minions registered", n), func() (bool, error) {
		if err := f.exited(); err != nil {
			return false, err
		}
		hosts, err := f.Coord.Hosts(ctx)
		if err != nil {
			return false, nil
		}
		alive := 0
		for _, h := range hosts {
			if h.Alive && h.Role == "minion" {
				alive++
			}
		}
		return alive >= n, nil
	})
}

// WaitDone waits until a generation newer than after is done and returns
// its status. A failed generation is an error.
func (f *Fleet) WaitDone(ctx context.Context, after int64) (coord.Status, error) {
	var st coord.Status
	err := Poll(ctx, fmt.Sprintf("a generation after %d to be done", after), func() (bool, error) {
		var err error
		st, err = f.Coord.Status(ctx)
		if err != nil || st.Generation.ID <= after {
			return false, nil
		}
		if st.State == coord.StateFailed {
			return false, fmt.Errorf("generation %d failed: %s", st.Generation.ID, st.Generation.Error)
		}
		return st.State == coord.StateDone, nil
	})
	return st, err
}

// Poll calls ok every 50 ms until it returns true or an error, or ctx ends.
func Poll(ctx context.Context, what string, ok func() (bool, error)) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		done, err := ok()
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-t.C:
		}
	}
}
