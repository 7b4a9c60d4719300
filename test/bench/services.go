package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fanout/fanout/internal/freeport"
)

// redisServer is a real redis-server on a free loopback port, without
// persistence, for the benchmarks that count commands.
type redisServer struct {
	Addr string
	URL  string
	cmd  *exec.Cmd
}

// startRedis starts redis-server on loopback with its files under dir.
func startRedis(ctx context.Context, dir string) (*redisServer, error) {
	return startRedisAt(ctx, dir, "127.0.0.1")
}

// startRedisAt starts redis-server bound to host (an address of this
// machine) with its files under dir. Bound to anything but loopback it
// runs with --protected-mode no, as hosts in other network namespaces
// reach it without a password.
func startRedisAt(ctx context.Context, dir, host string) (*redisServer, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server is needed (apt-get install redis-server): %w", err)
	}
	port, err := freePortOn(host)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("redis dir: %w", err)
	}
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	args := []string{"--port", strconv.Itoa(port), "--bind", host,
		"--save", "", "--appendonly", "no", "--dir", dir, "--maxclients", "4000"}
	if host != "127.0.0.1" {
		args = append(args, "--protected-mode", "no")
	}
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = dieWithParent()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start redis-server: %w", err)
	}
	r := &redisServer{Addr: addr, URL: "redis://" + addr, cmd: cmd}
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	if err := waitFor(ctx, 5*time.Second, func(ctx context.Context) error { return rdb.Ping(ctx).Err() }); err != nil {
		r.Stop()
		return nil, fmt.Errorf("redis-server on %s: %w", addr, err)
	}
	return r, nil
}

// Pid is the server's process id.
func (r *redisServer) Pid() int { return r.cmd.Process.Pid }

// Stop kills the server and waits for it.
func (r *redisServer) Stop() {
	if r.cmd.Process != nil {
		r.cmd.Process.Kill()
		r.cmd.Wait()
	}
}

// commandStats parses INFO commandstats into calls per command name
// ("hgetall", "evalsha", ...). Redis counts the commands a Lua script runs
// as well as the EVALSHA that ran it.
func commandStats(ctx context.Context, rdb *redis.Client) (map[string]int64, error) {
	info, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		return nil, fmt.Errorf("info commandstats: %w", err)
	}
	return parseCommandStats(info)
}

// parseCommandStats reads lines such as
// "cmdstat_hgetall:calls=12,usec=40,usec_per_call=3.33,...".
func parseCommandStats(info string) (map[string]int64, error) {
	out := map[string]int64{}
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		name, rest, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			k, v, _ := strings.Cut(kv, "=")
			if k != "calls" {
				continue
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("commandstats line %q: %w", sc.Text(), err)
			}
			out[strings.TrimPrefix(name, "cmdstat_")] = n
		}
	}
	return out, sc.Err()
}

// rsyncDaemon is "rsync --daemon" serving one read-only module, "src".
type rsyncDaemon struct {
	Port int
	cmd  *exec.Cmd
}

// startRsyncDaemon serves dir as rsync://127.0.0.1:PORT/src/, with its
// configuration and log under confDir.
func startRsyncDaemon(ctx context.Context, dir, confDir string) (*rsyncDaemon, error) {
	bin, err := exec.LookPath("rsync")
	if err != nil {
		return nil, fmt.Errorf("rsync is needed for the comparison: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		return nil, fmt.Errorf("rsync conf dir: %w", err)
	}
	conf := filepath.Join(confDir, "rsyncd.conf")
	// A daemon started by root switches to uid nobody by default (rsync
	// 3.2), which cannot read the benchmark's files: it keeps our ids.
	text := fmt.Sprintf(`pid file = %s
log file = %s
use chroot = no
uid = %d
gid = %d
[src]
	path = %s
	read only = yes
`, filepath.Join(confDir, "rsyncd.pid"), filepath.Join(confDir, "rsyncd.log"), os.Geteuid(), os.Getegid(), dir)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return nil, fmt.Errorf("write rsyncd.conf: %w", err)
	}
	cmd := exec.Command(bin, "--daemon", "--no-detach", "--config="+conf, "--address=127.0.0.1", "--port="+strconv.Itoa(port))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = dieWithParent()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start rsync daemon: %w", err)
	}
	d := &rsyncDaemon{Port: port, cmd: cmd}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	err = waitFor(ctx, 5*time.Second, func(ctx context.Context) error {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	})
	if err != nil {
		d.Stop()
		return nil, fmt.Errorf("rsync daemon on %s: %w", addr, err)
	}
	return d, nil
}

// URL is the module's URL.
func (d *rsyncDaemon) URL() string { return fmt.Sprintf("rsync://127.0.0.1:%d/src/", d.Port) }

// Stop ends the daemon.
func (d *rsyncDaemon) Stop() {
	if d.cmd.Process != nil {
		d.cmd.Process.Kill()
		d.cmd.Wait()
	}
}

// timeCommand runs a command to completion and returns its wall time.
func timeCommand(ctx context.Context, name string, args ...string) (time.Duration, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	if err != nil {
		return d, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return d, nil
}

// dieWithParent makes a helper server (redis-server, rsync --daemon) get
// SIGKILL when the benchmark dies without running its deferred Stops (a
// closed stdout pipe, a kill).
func dieWithParent() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

func freePort() (int, error) { return freePortOn("127.0.0.1") }

// freePortOn finds a TCP port free on host.
func freePortOn(host string) (int, error) { return freeport.Port(host) }

// waitFor retries check until it succeeds or limit passes.
func waitFor(ctx context.Context, limit time.Duration, check func(context.Context) error) error {
	deadline := time.Now().Add(limit)
	for {
		cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		err := check(cctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return errors.Join(err, ctx.Err())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cpuTime is a process's user+system CPU time from /proc/PID/stat.
func cpuTime(pid int) (time.Duration, error) {
	u, s, err := userSys(pid)
	return u + s, err
}

// userSys is a process's user and system CPU time from /proc/PID/stat.
func userSys(pid int) (user, sys time.Duration, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("read cpu time: %w", err)
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
	}
	// Linux reports clock ticks; USER_HZ is 100 on every mainstream build.
	tick := 10 * time.Millisecond
	return time.Duration(utime) * tick, time.Duration(stime) * tick, nil
}

// monitor counts the commands clients send to a Redis server, by command
// name, from "redis-cli monitor": unlike INFO commandstats it leaves out
// the commands Lua scripts run inside the server ("[0 lua]" lines), so it
// counts requests, what a host's round trips cost.
type monitor struct {
	cmd   *exec.Cmd
	done  chan struct{}
	calls map[string]int64
	err   error
}

// startMonitor runs redis-cli monitor against addr until Stop.
func startMonitor(ctx context.Context, addr string) (*monitor, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("monitor %s: %w", addr, err)
	}
	cmd := exec.CommandContext(ctx, "redis-cli", "-h", host, "-p", port, "monitor")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("monitor: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start redis-cli monitor: %w", err)
	}
	m := &monitor{cmd: cmd, done: make(chan struct{}), calls: map[string]int64{}}
	first := make(chan struct{})
	go func() {
		defer close(m.done)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		started := false
		for sc.Scan() {
			if !started { // redis-cli prints OK once MONITOR is on
				started = true
				close(first)
				continue
			}
			if name, ok := monitorLine(sc.Text()); ok {
				m.calls[name]++
			}
		}
		if !started {
			close(first)
		}
		m.err = sc.Err()
	}()
	select {
	case <-first:
	case <-time.After(5 * time.Second):
		m.Stop()
		return nil, errors.New("redis-cli monitor did not start")
	}
	return m, nil
}

// monitorLine parses `1700000000.123456 [0 127.0.0.1:5000] "hgetall" "k"`
// into "hgetall"; false for commands run by a Lua script.
func monitorLine(line string) (string, bool) {
	open := strings.IndexByte(line, '[')
	end := strings.IndexByte(line, ']')
	if open < 0 || end < open {
		return "", false
	}
	client := strings.Fields(line[open+1 : end])
	if len(client) == 2 && client[1] == "lua" {
		return "", false
	}
	rest := strings.TrimSpace(line[end+1:])
	if !strings.HasPrefix(rest, `"`) {
		return "", false
	}
	name, _, ok := strings.Cut(rest[1:], `"`)
	return strings.ToLower(name), ok
}

// Stop ends the monitor and returns the counts.
func (m *monitor) Stop() (map[string]int64, error) {
	if m.cmd.Process != nil {
		m.cmd.Process.Kill()
	}
	<-m.done
	m.cmd.Wait()
	return m.calls, m.err
}
