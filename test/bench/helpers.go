package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
)

// procGroup is the helper processes of one measurement (a tracker, aria2c
// clients, rsync daemons). stop SIGKILLs each and waits for it; each also
// gets SIGKILL if the benchmark dies first.
type procGroup struct {
	mu    sync.Mutex
	procs []*helperProc
}

type helperProc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// Pid is the process id.
func (p *helperProc) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended.
func (p *helperProc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// start runs argv with its output appended to logPath.
func (g *procGroup) start(argv []string, logPath string) (*helperProc, error) {
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = dieWithParent()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", strings.Join(argv, " "), err)
	}
	p := &helperProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.done)
	}()
	g.mu.Lock()
	g.procs = append(g.procs, p)
	g.mu.Unlock()
	return p, nil
}

// stop kills every process of the group and waits for them.
func (g *procGroup) stop() {
	g.mu.Lock()
	procs := g.procs
	g.procs = nil
	g.mu.Unlock()
	for _, p := range procs {
		p.cmd.Process.Signal(syscall.SIGKILL)
	}
	for _, p := range procs {
		<-p.done
	}
}
