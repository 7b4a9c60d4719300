package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fanout/fanout/internal/coord"
)

// processFleet is a master and minions, each a separate fanout process on
// loopback with its own root, state directory and port.
type processFleet struct {
	masterRoot string
	procs      []*exec.Cmd
}

func (f *processFleet) MasterRoot() string { return f.masterRoot }

// Stop sends SIGTERM to every process and waits for them, killing those
// that have not ended after 10 s.
func (f *processFleet) Stop() error {
	for _, p := range f.procs {
		p.Process.Signal(syscall.SIGTERM)
	}
	var errs []error
	for _, p := range f.procs {
		done := make(chan error, 1)
		go func() { done <- p.Wait() }()
		select {
		case err := <-done:
			var exit *exec.ExitError
			if err != nil && !errors.As(err, &exit) {
				errs = append(errs, err)
			}
		case <-time.After(10 * time.Second):
			p.Process.Kill()
			<-done
			errs = append(errs, fmt.Errorf("%s did not stop on SIGTERM", p.Args[0]))
		}
	}
	return errors.Join(errs...)
}

// processDeployer starts fleets from the fanout-master and fanout-minion
// binaries in bin. It returns once every minion has heartbeated.
func processDeployer(bin string) deployer {
	return func(ctx context.Context, spec fleetSpec) (deployment, error) {
		f := &processFleet{}
		ok := false
		defer func() {
			if !ok {
				f.Stop()
			}
		}()
		secret := filepath.Join(spec.Dir, "secret")
		if err := os.MkdirAll(spec.Dir, 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(secret, []byte("fanout-benchmark-secret-0123456789\n"), 0o600); err != nil {
			return nil, err
		}
		start := func(name, prog string, extra []string) (string, error) {
			root := filepath.Join(spec.Dir, name, "root")
			if err := os.MkdirAll(root, 0o755); err != nil {
				return "", err
			}
			port, err := freePort()
			if err != nil {
				return "", err
			}
			addr := "127.0.0.1:" + strconv.Itoa(port)
			args := append([]string{"run", "--redis", spec.RedisURL, "--key-prefix", spec.Prefix, "--id", name,
				"--root", root, "--state-dir", filepath.Join(spec.Dir, name, "state"),
				"--listen", addr, "--advertise", addr, "--secret-file", secret, "--log-level", "warn"}, extra...)
			cmd := exec.CommandContext(ctx, filepath.Join(bin, prog), args...)
			log, err := os.Create(filepath.Join(spec.Dir, name+".log"))
			if err != nil {
				return "", err
			}
			defer log.Close()
			cmd.Stdout, cmd.Stderr = log, log
			cmd.SysProcAttr = dieWithParent()
			if err := cmd.Start(); err != nil {
				return "", fmt.Errorf("start %s: %w", name, err)
			}
			f.procs = append(f.procs, cmd)
			return root, nil
		}
		root, err := start("master", "fanout-master", spec.MasterArgs)
		if err != nil {
			return nil, err
		}
		f.masterRoot = root
		for i := range spec.Minions {
			if _, err := start(fmt.Sprintf("minion-%02d", i+1), "fanout-minion", spec.MinionArgs); err != nil {
				return nil, err
			}
		}
		opts, err := redis.ParseURL(spec.RedisURL)
		if err != nil {
			return nil, err
		}
		rdb := redis.NewClient(opts)
		defer rdb.Close()
		c := coord.New(rdb, coord.Config{Prefix: spec.Prefix})
		err = waitFor(ctx, spec.ReadyWithin, func(ctx context.Context) error {
			hosts, err := c.Hosts(ctx)
			if err != nil {
				return err
			}
			alive := 0
			for _, h := range hosts {
				if h.Alive && h.Role == "minion" {
					alive++
				}
			}
			if alive < spec.Minions {
				return fmt.Errorf("%d of %d minions registered (logs in %s)", alive, spec.Minions, spec.Dir)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("%w%s", err, exitedLogs(spec.Dir, f.procs))
		}
		ok = true
		return f, nil
	}
}

// exitedLogs returns the logs of processes that have already exited, to
// say why a fleet did not come up.
func exitedLogs(dir string, procs []*exec.Cmd) string {
	var out string
	for _, p := range procs {
		if p.Process.Signal(syscall.Signal(0)) == nil {
			continue // still running
		}
		name := filepath.Base(p.Args[0])
		for i, a := range p.Args {
			if a == "--id" && i+1 < len(p.Args) {
				name = p.Args[i+1]
			}
		}
		b, _ := os.ReadFile(filepath.Join(dir, name+".log"))
		out += fmt.Sprintf("\n%s exited: %s", name, b)
	}
	return out
}
