// Package hook runs the command an operator configured for a task on a
// host once the host holds a new generation of it, verified in place.
//
// Hooks come from the minion's own command line only (--on-sync
// NAME=COMMAND, --hook-dir DIR), never from Redis: whoever can write Redis
// chooses which tree a host holds, not what it runs. What Redis does
// choose (the task path, the digest, the changed paths) reaches the hook as
// data, in environment variables and on stdin, never as part of a command
// line.
//
// A hook runs in its own process group with the minion's environment
// (less the minion's own FANOUT_* configuration, which may hold the Redis
// password) plus the FANOUT_* variables of Input; the changed paths are
// written to its stdin, each followed by a NUL byte. At its timeout, or
// when its owner's context ends, the whole process group is killed with
// SIGKILL. Its exit status and the last lines of its output (stdout and
// stderr together) are returned in a Result, bounded in size.
package hook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// DefaultTimeout is how long a hook may run when no timeout is given.
const DefaultTimeout = 5 * time.Minute

// Bounds of what a Result keeps of a hook's output.
const (
	// TailLines is how many of the last output lines a Result keeps.
	TailLines = 10
	// TailLineBytes bounds each kept line.
	TailLineBytes = 256
	// tailKeep is how many bytes of the end of the output are buffered
	// while the hook runs; the rest is discarded as it is written.
	tailKeep = 16 << 10
)

// waitDelay bounds how long Run waits for the hook's output pipes to
// close once the hook exited (a background child may hold them open).
const waitDelay = 2 * time.Second

// namePattern is what a task name may look like: a hook directory holds
// an executable of that name, so it can never name a path outside it.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// CheckName returns an error when name cannot be a task name: empty,
// longer than 128 bytes, starting with anything but a letter or digit, or
// holding anything but letters, digits, '.', '_' and '-'.
func CheckName(name string) error {
	if !namePattern.MatchString(name) {
		return fmt.Errorf("task name %q: use 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	return nil
}

// Command is a hook as configured: a shell command line (--on-sync, run
// with sh -c) or an executable (--hook-dir, run with no shell).
type Command struct {
	// Shell is the command line given to /bin/sh -c; empty for an
	// executable.
	Shell string
	// Path is the executable, run without a shell and with no arguments;
	// empty for a shell command.
	Path string
}

// String describes c for logs and status.
func (c Command) String() string {
	if c.Shell != "" {
		return "sh -c " + strconv.Quote(c.Shell)
	}
	return c.Path
}

// Set is the hooks of one minion: a shell command per task name, and a
// directory of executables named after tasks. A command given for a name
// wins over the directory's executable of that name.
type Set struct {
	commands map[string]string
	dir      string
	timeout  time.Duration
}

// NewSet checks the configuration and returns the Set. specs are the
// --on-sync values, NAME=COMMAND each; dir is --hook-dir (empty: none),
// which must be a directory no one but its owner can write; timeout is
// --hook-timeout (DefaultTimeout when zero). Each error names the flag and
// what to do.
func NewSet(specs []string, dir string, timeout time.Duration) (*Set, error) {
	if timeout < 0 {
		return nil, fmt.Errorf("--hook-timeout %s: give a positive duration such as 5m", timeout)
	}
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	s := &Set{commands: map[string]string{}, timeout: timeout}
	for _, spec := range specs {
		name, cmd, ok := strings.Cut(spec, "=")
		if !ok || strings.TrimSpace(cmd) == "" {
			return nil, fmt.Errorf("--on-sync %q: give NAME=COMMAND, such as --on-sync 'default=systemctl reload app' (the plain task is named default)", spec)
		}
		if err := CheckName(name); err != nil {
			return nil, fmt.Errorf("--on-sync %q: %w", spec, err)
		}
		if _, dup := s.commands[name]; dup {
			return nil, fmt.Errorf("--on-sync: task %s has two commands; give one (join them with && in one command)", name)
		}
		s.commands[name] = cmd
	}
	if dir != "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return nil, fmt.Errorf("--hook-dir %s: %w", dir, err)
		}
		fi, err := os.Stat(abs)
		if err != nil {
			return nil, fmt.Errorf("--hook-dir %s: %w (create it, or drop the flag)", dir, err)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("--hook-dir %s is not a directory", dir)
		}
		if err := notWritableByOthers(abs, fi); err != nil {
			return nil, fmt.Errorf("--hook-dir: %w", err)
		}
		s.dir = abs
	}
	return s, nil
}

// Empty reports whether no hook is configured at all.
func (s *Set) Empty() bool { return s == nil || (len(s.commands) == 0 && s.dir == "") }

// Timeout is how long a hook of s may run.
func (s *Set) Timeout() time.Duration { return s.timeout }

// Lookup returns the hook for task name, if one is configured. An
// executable in the hook directory is looked up at each call, so one added
// later needs no restart. A file there that is not a regular executable,
// or that others than its owner may write, is an error: the hook is
// configured but cannot run.
func (s *Set) Lookup(name string) (Command, bool, error) {
	if s == nil {
		return Command{}, false, nil
	}
	if err := CheckName(name); err != nil {
		return Command{}, false, err
	}
	if cmd, ok := s.commands[name]; ok {
		return Command{Shell: cmd}, true, nil
	}
	if s.dir == "" {
		return Command{}, false, nil
	}
	p := filepath.Join(s.dir, name)
	fi, err := os.Stat(p) // a symlink the operator put there is followed
	if errors.Is(err, os.ErrNotExist) {
		return Command{}, false, nil
	}
	if err != nil {
		return Command{}, true, fmt.Errorf("hook %s: %w", p, err)
	}
	if !fi.Mode().IsRegular() {
		return Command{}, true, fmt.Errorf("hook %s is not a regular file", p)
	}
	if fi.Mode().Perm()&0o111 == 0 {
		return Command{}, true, fmt.Errorf("hook %s is not executable: chmod 755 %s", p, p)
	}
	if err := notWritableByOthers(p, fi); err != nil {
		return Command{}, true, err
	}
	return Command{Path: p}, true, nil
}

// notWritableByOthers refuses a hook or hook directory that its group or
// everyone may write: anyone who could would run commands as the minion.
func notWritableByOthers(p string, fi os.FileInfo) error {
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%s is writable by group or others (mode %04o), who could then run commands as fanout-minion: chmod go-w %s", p, fi.Mode().Perm(), p)
	}
	return nil
}

// Input is what a hook is told.
type Input struct {
	Task       string // task name, "default" for the plain task
	Host       string // this host's id
	Generation int64
	Digest     string
	Path       string // the tree on this host (--root joined with the task path)
	TaskPath   string // the task path as published
	// Release is the release directory Path points at when the task is
	// released (publish --atomic); "" when the tree is in place.
	Release string
	// Changed lists the paths the pull changed, relative to Path
	// ("." is Path itself): written, created, removed or given new
	// metadata. Empty when the host already held the content.
	Changed []string
}

// Env returns the variables the hook gets for in, as NAME=value.
func (in Input) Env() []string {
	return []string{
		"FANOUT_TASK=" + in.Task,
		"FANOUT_HOST=" + in.Host,
		"FANOUT_GENERATION=" + strconv.FormatInt(in.Generation, 10),
		"FANOUT_DIGEST=" + in.Digest,
		"FANOUT_PATH=" + in.Path,
		"FANOUT_TASK_PATH=" + in.TaskPath,
		"FANOUT_CHANGED=" + strconv.Itoa(len(in.Changed)),
		"FANOUT_RELEASE=" + in.Release,
	}
}

// Result is how a hook ended.
type Result struct {
	// OK: the hook exited 0.
	OK bool
	// Exit is its exit status; -1 when it was killed by a signal or did
	// not start.
	Exit int
	// TimedOut: it was killed at its timeout.
	TimedOut bool
	// Error says why it failed, in one line ("exit status 3", "killed at
	// the 5m0s timeout", "fork/exec ...: permission denied").
	Error string
	// Output holds the last lines of its output (stdout and stderr
	// together), at most TailLines of TailLineBytes each, as valid UTF-8;
	// it is not escaped for a terminal.
	Output   []string
	Started  time.Time
	Duration time.Duration
}

// Run runs the hook c with in, bounded by s's timeout and by ctx: when
// either ends first, the hook's whole process group is killed. Run returns
// once the hook's process has exited (and its output pipes closed, or
// waitDelay after).
func (s *Set) Run(ctx context.Context, c Command, in Input) Result {
	return Run(ctx, c, in, s.timeout)
}

// errTimeout is the cause of a hook context that reached its timeout.
var errTimeout = errors.New("hook timeout")

// Run runs c with in for at most timeout; see Set.Run.
func Run(ctx context.Context, c Command, in Input, timeout time.Duration) Result {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	res := Result{Exit: -1, Started: time.Now()}
	hctx, cancel := context.WithTimeoutCause(ctx, timeout, errTimeout)
	defer cancel()
	var cmd *exec.Cmd
	if c.Shell != "" {
		cmd = exec.CommandContext(hctx, "/bin/sh", "-c", c.Shell)
	} else {
		cmd = exec.CommandContext(hctx, c.Path)
	}
	cmd.Dir = "/"
	cmd.Env = append(baseEnv(os.Environ()), in.Env()...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// The whole group: a shell's children, a script's background jobs.
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = waitDelay
	cmd.Stdin = bytes.NewReader(nulList(in.Changed))
	out := &tail{}
	cmd.Stdout, cmd.Stderr = out, out
	err := cmd.Run()
	res.Duration = time.Since(res.Started)
	res.Output = out.lines()
	if cmd.ProcessState != nil {
		res.Exit = cmd.ProcessState.ExitCode()
	}
	switch {
	case err == nil, errors.Is(err, exec.ErrWaitDelay) && res.Exit == 0:
		// Exited 0 (a background child holding its output open past
		// waitDelay does not make it fail).
		res.OK = true
	case ctx.Err() != nil:
		res.Error = "interrupted: the minion stopped"
	case errors.Is(context.Cause(hctx), errTimeout):
		res.TimedOut = true
		res.Error = fmt.Sprintf("killed at the %s timeout (--hook-timeout)", timeout)
	default:
		res.Error = oneLine(err.Error())
	}
	return res
}

// baseEnv is the minion's environment without its own FANOUT_*
// configuration (FANOUT_REDIS may hold a password).
func baseEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if !strings.HasPrefix(kv, "FANOUT_") {
			out = append(out, kv)
		}
	}
	return out
}

// nulList is paths, each followed by a NUL byte, sorted.
func nulList(paths []string) []byte {
	sorted := append([]string(nil), paths...)
	sort.Strings(sorted)
	var b bytes.Buffer
	for _, p := range sorted {
		b.WriteString(p)
		b.WriteByte(0)
	}
	return b.Bytes()
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// tail keeps the end of a hook's output. exec writes to it from one
// goroutine at a time (Stdout and Stderr are the same writer).
type tail struct {
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) > tailKeep {
		p = p[len(p)-tailKeep:]
	}
	t.buf = append(t.buf, p...)
	if len(t.buf) > 2*tailKeep {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-tailKeep:]...)
	}
	return n, nil
}

// lines returns the last TailLines lines, each cut to TailLineBytes, as
// valid UTF-8; a final empty line (output ending in a newline) is not one.
func (t *tail) lines() []string {
	b := t.buf
	if len(b) > tailKeep {
		b = b[len(b)-tailKeep:]
	}
	s := strings.TrimRight(strings.ToValidUTF8(string(b), "\uFFFD"), "\n")
	if s == "" {
		return nil
	}
	all := strings.Split(s, "\n")
	all = all[max(0, len(all)-TailLines):]
	out := make([]string, len(all))
	for i, l := range all {
		l = strings.TrimSuffix(l, "\r")
		if len(l) > TailLineBytes {
			l = strings.ToValidUTF8(l[:TailLineBytes], "") + "..."
		}
		out[i] = l
	}
	return out
}

var _ io.Writer = (*tail)(nil)
