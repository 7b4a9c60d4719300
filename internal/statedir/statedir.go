// Package statedir guards a fanout state directory: one writer at a time
// (an advisory lock the kernel releases when the process dies), and small
// files written so that a crash or a power cut leaves either the old or the
// new content, durably.
package statedir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Lock is a held lock on a state directory.
type Lock struct {
	f *os.File
}

// Lock files in a state directory. The writer lock is held exclusively by
// the process that changes what the directory records (a pulling minion, a
// master); the server lock is shared by processes that only read it (a
// serve daemon) and held exclusively by a process that serves and writes.
const (
	writerLock = "writer.lock"
	serverLock = "server.lock"
)

// ErrLocked is wrapped by the error Acquire returns when another process
// holds the lock.
var ErrLocked = errors.New("state directory in use")

// Acquire takes dir's writer lock (exclusive) or, with shared, its server
// lock in shared mode, without waiting. what names this process in the
// lock file ("fanout-minion run"), so a refused process can name the
// holder. The error for a lock held elsewhere names the directory, the
// holder's pid and what it is, and says to give each process its own
// --state-dir.
func Acquire(dir, what string, shared bool) (*Lock, error) {
	name, how := writerLock, unix.LOCK_EX
	if shared {
		name, how = serverLock, unix.LOCK_SH
	}
	return acquire(dir, name, what, how)
}

// AcquireServer takes dir's server lock exclusively: for a process that
// both writes the directory and serves from it (minion run), which no
// serve daemon may share.
func AcquireServer(dir, what string) (*Lock, error) {
	return acquire(dir, serverLock, what, unix.LOCK_EX)
}

func acquire(dir, name, what string, how int) (*Lock, error) {
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock state directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB); err != nil {
		holder := readHolder(f)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is locked by %s; two fanout processes must not share a state directory: give each its own --state-dir", ErrLocked, dir, holder)
		}
		return nil, fmt.Errorf("lock state directory %s: %w", dir, err)
	}
	// Record the holder for whoever is refused next. A shared lock may
	// have several holders: the file names the last to take it.
	line := fmt.Sprintf("%d %s\n", os.Getpid(), what)
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(line), 0)
	}
	return &Lock{f: f}, nil
}

// readHolder describes the process named in a lock file. The holder
// writes its name just after it takes the lock: an empty file is read
// again for a moment.
func readHolder(f *os.File) string {
	b := make([]byte, 256)
	var pid, what string
	for range 20 {
		n, _ := f.ReadAt(b, 0)
		pid, what, _ = strings.Cut(strings.TrimSpace(string(b[:n])), " ")
		if pid != "" {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := strconv.Atoi(pid); err != nil {
		return "another process"
	}
	if what == "" {
		what = "a fanout process"
	}
	return fmt.Sprintf("%s (pid %s)", what, pid)
}

// Release drops the lock. Releasing a nil Lock is a no-op.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close() // closing the last descriptor drops the flock
	l.f = nil
	return err
}

// WriteFile replaces the file at path with data atomically and durably: a
// temporary file in the same directory is written and fsynced, renamed over
// path, and the directory is fsynced, so after a crash path holds either
// the old or the new content, and the new one once WriteFile returned.
func WriteFile(path string, data []byte, tempPrefix string) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, tempPrefix+"state-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return SyncDir(dir)
}

// Remove deletes the file at path, if any, durably (the directory is
// fsynced).
func Remove(path string) error {
	err := os.Remove(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// SyncDir fsyncs a directory, making the creations, renames and removals
// in it durable.
func SyncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}

// ForTask is where a daemon whose state directory is dir keeps the state
// of task name: dir itself for the plain task ("" or "default", so a host
// that upgrades to named tasks moves nothing), dir/tasks/NAME for a named
// one. name must be a valid task name (coord.ValidTaskName): no separator,
// no leading dot.
func ForTask(dir, name string) string {
	if name == "" || name == "default" {
		return dir
	}
	return filepath.Join(dir, "tasks", name)
}
