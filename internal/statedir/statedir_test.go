package statedir

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriterLockIsExclusive(t *testing.T) {
	dir := t.TempDir()
	l, err := Acquire(dir, "fanout-minion run", false)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Acquire(dir, "fanout-minion sync", false)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second writer: %v", err)
	}
	for _, want := range []string{dir, fmt.Sprintf("pid %d", os.Getpid()), "fanout-minion run", "--state-dir"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not name %q", err, want)
		}
	}
	// A reader shares the server lock with another reader, not with a
	// process that serves and writes.
	r1, err := Acquire(dir, "fanout-minion serve", true)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := Acquire(dir, "fanout-minion serve", true)
	if err != nil {
		t.Fatalf("two readers: %v", err)
	}
	if _, err := AcquireServer(dir, "fanout-minion run"); !errors.Is(err, ErrLocked) {
		t.Errorf("server lock taken beside a reader: %v", err)
	}
	r1.Release()
	r2.Release()
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	l2, err := Acquire(dir, "fanout-minion sync", false)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	l2.Release()
}

// The lock holds across processes and is dropped when its holder dies.
func TestLockAcrossProcesses(t *testing.T) {
	if os.Getenv("STATEDIR_HOLD") != "" {
		if _, err := Acquire(os.Getenv("STATEDIR_HOLD"), "holder", false); err != nil {
			fmt.Println("lock failed:", err)
			os.Exit(1)
		}
		fmt.Println("locked")
		os.Stdin.Read(make([]byte, 1)) // hold until the parent closes stdin
		os.Exit(0)
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run", "^TestLockAcrossProcesses$")
	cmd.Env = append(os.Environ(), "STATEDIR_HOLD="+dir)
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, _ := out.Read(buf)
	if !strings.Contains(string(buf[:n]), "locked") {
		t.Fatalf("child: %q", buf[:n])
	}
	_, err := Acquire(dir, "me", false)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("holder (pid %d)", cmd.Process.Pid)) {
		t.Fatalf("lock held by child %d: %v", cmd.Process.Pid, err)
	}
	cmd.Process.Kill()
	stdin.Close()
	cmd.Wait()
	l, err := Acquire(dir, "me", false)
	if err != nil {
		t.Fatalf("lock of a killed process not released: %v", err)
	}
	l.Release()
}

func TestWriteFileAndRemove(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "held.json")
	for _, content := range []string{"one", "two"} {
		if err := WriteFile(p, []byte(content), ".tmp-"); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(p); string(b) != content {
			t.Fatalf("content %q, want %q", b, content)
		}
	}
	if err := Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := Remove(p); err != nil {
		t.Fatalf("removing a missing file: %v", err)
	}
	if des, _ := os.ReadDir(dir); len(des) != 0 {
		t.Errorf("left behind: %v", des)
	}
}

func TestForTask(t *testing.T) {
	for _, c := range []struct{ name, want string }{
		{"", "/var/lib/fanout"},
		{"default", "/var/lib/fanout"},
		{"models", "/var/lib/fanout/tasks/models"},
	} {
		if got := ForTask("/var/lib/fanout", c.name); got != c.want {
			t.Errorf("ForTask(%q) = %q, want %q", c.name, got, c.want)
		}
	}
}
