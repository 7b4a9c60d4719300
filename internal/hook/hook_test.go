package hook

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func input(changed ...string) Input {
	return Input{Task: "default", Host: "h1", Generation: 7, Digest: "abc123", Path: "/srv/root/data/m42", TaskPath: "/data/m42", Changed: changed}
}

// TestRunEnvironmentAndStdin: the hook sees the FANOUT_* variables of its
// input, not the minion's own FANOUT_* configuration, and the changed
// paths on stdin, sorted, each followed by a NUL byte.
func TestRunEnvironmentAndStdin(t *testing.T) {
	t.Setenv("FANOUT_REDIS", "redis://:secret@redis:6379/0")
	t.Setenv("HOOK_TEST_INHERITED", "yes")
	dir := t.TempDir()
	envOut, stdinOut := filepath.Join(dir, "env"), filepath.Join(dir, "stdin")
	c := Command{Shell: "env > " + envOut + " && cat > " + stdinOut}
	res := Run(context.Background(), c, input("b/two", "a one", "dir\nwith newline/f"), time.Minute)
	if !res.OK || res.Exit != 0 || res.Error != "" {
		t.Fatalf("hook failed: %+v", res)
	}
	env, err := os.ReadFile(envOut)
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{}
	for _, l := range strings.Split(string(env), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			vars[k] = v
		}
	}
	want := map[string]string{
		"FANOUT_TASK": "default", "FANOUT_HOST": "h1", "FANOUT_GENERATION": "7", "FANOUT_DIGEST": "abc123",
		"FANOUT_PATH": "/srv/root/data/m42", "FANOUT_TASK_PATH": "/data/m42", "FANOUT_CHANGED": "3",
		"HOOK_TEST_INHERITED": "yes",
	}
	for k, v := range want {
		if vars[k] != v {
			t.Errorf("%s = %q, want %q", k, vars[k], v)
		}
	}
	if _, ok := vars["FANOUT_REDIS"]; ok {
		t.Error("the minion's FANOUT_REDIS (a password) reached the hook")
	}
	stdin, err := os.ReadFile(stdinOut)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(stdin), "a one\x00b/two\x00dir\nwith newline/f\x00"; got != want {
		t.Errorf("stdin = %q, want %q", got, want)
	}
}

// TestRunFailureKeepsTail: a failing hook reports its exit status and the
// last TailLines lines of stdout and stderr, each bounded, as valid UTF-8.
func TestRunFailureKeepsTail(t *testing.T) {
	script := `for i in $(seq 1 30); do echo "line $i"; done; echo "to stderr" >&2; printf 'bad \377 byte\n'; head -c 1000 /dev/zero | tr '\0' x; echo; exit 3`
	res := Run(context.Background(), Command{Shell: script}, input(), time.Minute)
	if res.OK || res.Exit != 3 || res.TimedOut {
		t.Fatalf("result %+v, want exit 3", res)
	}
	if res.Error != "exit status 3" {
		t.Errorf("error %q", res.Error)
	}
	if len(res.Output) != TailLines {
		t.Fatalf("%d lines kept, want %d: %q", len(res.Output), TailLines, res.Output)
	}
	if res.Output[0] != "line 24" || res.Output[7] != "to stderr" || res.Output[8] != "bad \uFFFD byte" {
		t.Errorf("tail %q", res.Output)
	}
	last := res.Output[9]
	if len(last) != TailLineBytes+len("...") || !strings.HasPrefix(last, "xxxx") || !strings.HasSuffix(last, "...") {
		t.Errorf("long line kept as %d bytes: %.40q", len(last), last)
	}
}

// TestRunTailOfHugeOutput: output far beyond the buffer keeps only its end.
func TestRunTailOfHugeOutput(t *testing.T) {
	res := Run(context.Background(), Command{Shell: `seq 1 200000`}, input(), time.Minute)
	if !res.OK {
		t.Fatalf("%+v", res)
	}
	if len(res.Output) != TailLines || res.Output[TailLines-1] != "200000" || res.Output[0] != "199991" {
		t.Errorf("tail %q", res.Output)
	}
}

// gone reports whether pid has exited (a zombie waiting for its reaper
// counts as exited).
func gone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	// pid (comm) S ...: the state follows the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// TestRunTimeoutKillsProcessGroup: a hook that hangs is killed at its
// timeout, with the children it started.
func TestRunTimeoutKillsProcessGroup(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child.pid")
	c := Command{Shell: "sleep 300 & echo $! > " + pidFile + "; echo started; wait"}
	res := Run(context.Background(), c, input(), 500*time.Millisecond)
	if res.OK || !res.TimedOut || res.Exit != -1 {
		t.Fatalf("result %+v, want killed at the timeout", res)
	}
	if !strings.Contains(res.Error, "timeout") || len(res.Output) != 1 || res.Output[0] != "started" {
		t.Errorf("error %q, output %q", res.Error, res.Output)
	}
	if res.Duration >= 300*time.Second {
		t.Fatalf("the hook ran its whole sleep: %s", res.Duration)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; !gone(pid); i++ {
		if i == 100 {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("the hook's child %d outlived the timeout", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRunCancelledKillsHook: the owner's context ending kills the hook and
// says so; it is not a timeout.
func TestRunCancelledKillsHook(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan Result, 1)
	dir := t.TempDir()
	mark := filepath.Join(dir, "running")
	go func() { done <- Run(ctx, Command{Shell: "touch " + mark + "; sleep 300"}, input(), time.Hour) }()
	for i := 0; ; i++ {
		if _, err := os.Stat(mark); err == nil {
			break
		}
		if i == 400 {
			t.Fatal("hook never started")
		}
		time.Sleep(25 * time.Millisecond)
	}
	cancel()
	res := <-done
	if res.OK || res.TimedOut || !strings.Contains(res.Error, "interrupted") {
		t.Errorf("result %+v, want interrupted", res)
	}
}

// TestRunBackgroundChildHoldingOutput: a hook that exits 0 leaving a
// background child with its stdout open still succeeds, once waitDelay
// passes.
func TestRunBackgroundChildHoldingOutput(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child.pid")
	res := Run(context.Background(), Command{Shell: "sleep 30 & echo $! > " + pidFile + "; echo done"}, input(), time.Minute)
	if b, err := os.ReadFile(pidFile); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if !res.OK || res.Exit != 0 || len(res.Output) != 1 || res.Output[0] != "done" {
		t.Errorf("result %+v", res)
	}
}

// TestRunExecutableWithoutShell: a --hook-dir executable runs as itself,
// with no shell between: its argv[0] is its path and it gets no
// arguments.
func TestRunExecutableWithoutShell(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "default")
	if err := os.WriteFile(p, []byte("#!/bin/sh\necho \"$0|$#|$FANOUT_TASK\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	s, err := NewSet(nil, dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, ok, err := s.Lookup("default")
	if err != nil || !ok || c.Path != p || c.Shell != "" {
		t.Fatalf("lookup: %+v %v %v", c, ok, err)
	}
	res := s.Run(context.Background(), c, input())
	if !res.OK || len(res.Output) != 1 || res.Output[0] != p+"|0|default" {
		t.Errorf("result %+v", res)
	}
	if s.Timeout() != DefaultTimeout {
		t.Errorf("timeout %s", s.Timeout())
	}
}

// TestRunMissingExecutable: a hook that cannot start fails with the reason.
func TestRunMissingExecutable(t *testing.T) {
	res := Run(context.Background(), Command{Path: "/nonexistent/hook"}, input(), time.Minute)
	if res.OK || res.Exit != -1 || !strings.Contains(res.Error, "no such file") {
		t.Errorf("result %+v", res)
	}
}

func TestNewSetAndLookup(t *testing.T) {
	dir := t.TempDir()
	s, err := NewSet([]string{"default=echo a=b", "models=true"}, dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if c, ok, err := s.Lookup("default"); err != nil || !ok || c.Shell != "echo a=b" {
		t.Errorf("default: %+v %v %v", c, ok, err)
	}
	if _, ok, err := s.Lookup("other"); ok || err != nil {
		t.Errorf("other: %v %v", ok, err)
	}
	// --on-sync wins over the directory.
	if err := os.WriteFile(filepath.Join(dir, "models"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if c, _, _ := s.Lookup("models"); c.Shell != "true" {
		t.Errorf("models: %+v", c)
	}
	for name, mode := range map[string]os.FileMode{"noexec": 0o644, "groupw": 0o775, "worldw": 0o757} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if _, ok, err := s.Lookup(name); !ok || err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("%s (mode %o): %v %v, want an error naming it", name, mode, ok, err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := s.Lookup("adir"); !ok || err == nil {
		t.Errorf("a directory as hook: %v %v", ok, err)
	}
	for _, bad := range []string{"", "../x", "a/b", ".hidden", "-x", strings.Repeat("a", 129), "a b", "a\x00"} {
		if _, ok, err := s.Lookup(bad); ok || err == nil {
			t.Errorf("Lookup(%q) = %v, %v; want refused", bad, ok, err)
		}
	}
	var none *Set
	if !none.Empty() || s.Empty() {
		t.Error("Empty")
	}
}

func TestNewSetRefusesBadFlags(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "open")
	if err := os.Mkdir(open, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		specs   []string
		dir     string
		timeout time.Duration
		want    string
	}{
		{[]string{"default"}, "", 0, "NAME=COMMAND"},
		{[]string{"default=  "}, "", 0, "NAME=COMMAND"},
		{[]string{"../x=true"}, "", 0, "task name"},
		{[]string{"a=true", "a=false"}, "", 0, "two commands"},
		{nil, filepath.Join(dir, "missing"), 0, "--hook-dir"},
		{nil, file, 0, "not a directory"},
		{nil, open, 0, "chmod go-w"},
		{nil, "", -time.Second, "--hook-timeout"},
	}
	for _, c := range cases {
		if _, err := NewSet(c.specs, c.dir, c.timeout); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("NewSet(%q, %q, %s) = %v, want an error with %q", c.specs, c.dir, c.timeout, err, c.want)
		}
	}
}
