package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// e2eSeed002 distributes the row's file with the original scripts'
// algorithm, as seed002-netbed.sh runs it: an rsync daemon on every host,
// the source's address in synchronize_queue; each minion SPOPs a source
// (polling every -seed002-poll while the set is empty), rsyncs the whole
// file from it, then adds the source and itself back. The queue commands
// go from this process (go-redis) instead of one redis-cli process each.
// Time zero is the minions' start.
func (b *bench) e2eSeed002(ctx context.Context, env *e2eEnv) (toolRun, error) {
	row := env.row
	poll := b.cfg.SeedPoll
	run := toolRun{Command: fmt.Sprintf("as seed002-netbed.sh: for I in 0..%d: ip netns exec fbI rsync --daemon --no-detach --address=10.250.0.(I+2) --port=873; "+
		"SADD synchronize_queue %s; each minion I: SPOP synchronize_queue (every %s while empty), SADD running_queue, "+
		"ip netns exec fbI rsync -a rsync://SRC:873/data/model.bin DATA/, SADD synchronize_queue SRC ME, SADD finished_queue ME, SREM running_queue ME",
		row.N, netbedIP(0), poll)}
	if env.bed == nil {
		return run, notApplicable{"needs the testbed (network namespaces)"}
	}
	if _, err := exec.LookPath("rsync"); err != nil {
		return run, notApplicable{"rsync not installed"}
	}
	w := env.runDir
	var g procGroup
	defer g.stop()
	data := func(i int) string { return filepath.Join(w, fmt.Sprintf("h%d", i), "data") }
	for i := 0; i <= row.N; i++ {
		if err := os.MkdirAll(data(i), 0o755); err != nil {
			return run, err
		}
		conf := filepath.Join(w, fmt.Sprintf("h%d", i), "rsyncd.conf")
		text := fmt.Sprintf("pid file = %s\nuse chroot = no\n[data]\npath = %s\nread only = no\n",
			filepath.Join(w, fmt.Sprintf("h%d", i), "rsyncd.pid"), data(i))
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			return run, err
		}
		argv := append(netnsExec(i), "rsync", "--daemon", "--no-detach", "--address="+netbedIP(i), "--port=873", "--config="+conf)
		if _, err := g.start(argv, filepath.Join(w, fmt.Sprintf("h%d.log", i))); err != nil {
			return run, err
		}
	}
	src := filepath.Join(data(0), "model.bin")
	if err := copyFile(filepath.Join(env.data, "model.bin"), src); err != nil {
		return run, err
	}
	for i := 0; i <= row.N; i++ {
		addr := net.JoinHostPort(netbedIP(i), "873")
		if err := waitFor(ctx, 10*time.Second, func(ctx context.Context) error {
			c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			if err == nil {
				c.Close()
			}
			return err
		}); err != nil {
			return run, fmt.Errorf("rsync daemon on %s: %w", addr, err)
		}
	}
	rdb := redis.NewClient(&redis.Options{Addr: env.redis.Addr, PoolSize: row.N + 4})
	defer rdb.Close()
	if err := rdb.SAdd(ctx, "synchronize_queue", netbedIP(0)).Err(); err != nil {
		return run, err
	}
	var mu sync.Mutex
	run.Hosts = map[int]time.Duration{}
	errs := make([]error, row.N+1)
	var wg sync.WaitGroup
	foreign := startForeign()
	start := time.Now()
	for i := 1; i <= row.N; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = seedMinion(ctx, rdb, i, data(i), poll)
			mu.Lock()
			run.Hosts[i] = time.Since(start)
			mu.Unlock()
		}()
	}
	wg.Wait()
	run.Total = time.Since(start)
	run.Foreign = foreign.stop()
	if err := errors.Join(errs...); err != nil {
		return run, err
	}
	for i := 1; i <= row.N; i++ {
		if err := sameFile(src, filepath.Join(data(i), "model.bin")); err != nil {
			return run, err
		}
	}
	run.Detail = fmt.Sprintf("%d rounds of whole-file doubling in theory", DoublingRounds(row.N))
	return run, nil
}

// seedMinion is one host of the original algorithm.
func seedMinion(ctx context.Context, rdb *redis.Client, i int, dst string, poll time.Duration) error {
	me := netbedIP(i)
	for {
		src, err := rdb.SPop(ctx, "synchronize_queue").Result()
		if errors.Is(err, redis.Nil) {
			select {
			case <-ctx.Done():
				return fmt.Errorf("host %d found no source: %w", i, ctx.Err())
			case <-time.After(poll):
			}
			continue
		}
		if err != nil {
			return err
		}
		if err := rdb.SAdd(ctx, "running_queue", me).Err(); err != nil {
			return err
		}
		argv := append(netnsExec(i), "rsync", "-a", fmt.Sprintf("rsync://%s:873/data/model.bin", src), dst+"/")
		if out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("host %d: %s: %w: %s", i, strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
		}
		_, err = rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			p.SAdd(ctx, "synchronize_queue", src, me)
			p.SAdd(ctx, "finished_queue", me)
			p.SRem(ctx, "running_queue", me)
			return nil
		})
		return err
	}
}
