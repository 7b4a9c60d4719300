package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fanout/fanout/internal/lab"
)

// redisCost is benchmark 4: commands per host per task, then the idle rate.
func (b *bench) redisCost(ctx context.Context, t *Table) error {
	if err := b.taskCommands(ctx, t); err != nil {
		return err
	}
	return b.idleRate(ctx, t)
}

// taskCommands counts the Redis commands one task costs: a master and
// b.cfg.TaskHosts minions (in this process, internal/lab) at the default
// --poll of 1s, a real redis-server whose statistics are reset once every
// minion has registered. The benchmark's own commands are taken out.
func (b *bench) taskCommands(ctx context.Context, t *Table) error {
	const prefix = "task:"
	n := b.cfg.TaskHosts
	poll := time.Second
	dir := filepath.Join(b.cfg.Dir, "task")
	l, err := lab.Start(ctx, lab.Config{Dir: dir, Minions: n, RedisURL: b.redis.URL, Prefix: prefix, Poll: poll})
	if err != nil {
		return fmt.Errorf("start master and %d minions: %w", n, err)
	}
	defer func() { l.Stop(); os.RemoveAll(dir) }()
	size := int64(8 << 20)
	if err := writeBigFile(filepath.Join(l.Master.Root, "task", "file.bin"), size, 4); err != nil {
		return err
	}
	obs, err := newObserver(b.redis.URL, prefix)
	if err != nil {
		return err
	}
	defer obs.Close()
	if err := waitFor(ctx, 30*time.Second, func(ctx context.Context) error {
		st, err := obs.co.Status(ctx)
		if err == nil && len(st.Expected) < n {
			err = fmt.Errorf("%d of %d minions registered", len(st.Expected), n)
		}
		return err
	}); err != nil {
		return err
	}
	tc, err := b.countTask(ctx, obs, "/task")
	if err != nil {
		return err
	}
	tc.add(t, fmt.Sprintf("one task to %d minions, --poll 1s", n),
		fmt.Sprintf("master + %d minions (internal/lab, one process, heartbeat 1s), %s file; CONFIG RESETSTAT, SET task, INFO commandstats, redis-cli monitor",
			n, sizeString(size)))
	return nil
}

// taskCount is what one task cost in Redis commands.
type taskCount struct {
	res      result
	executed map[string]int64 // INFO commandstats: requests and the commands scripts ran
	sent     map[string]int64 // MONITOR: requests only
}

// countTask publishes path and counts the commands Redis served until the
// generation was done, without the benchmark's own.
func (b *bench) countTask(ctx context.Context, obs *observer, path string) (taskCount, error) {
	mon, err := startMonitor(ctx, b.redis.Addr)
	if err != nil {
		return taskCount{}, err
	}
	defer mon.Stop()
	if err := obs.rdb.ConfigResetStat(ctx).Err(); err != nil {
		return taskCount{}, fmt.Errorf("config resetstat: %w", err)
	}
	own := obs.count.Snapshot()
	res, err := obs.publish(ctx, path, 0, b.cfg.Timeout)
	if err != nil {
		return taskCount{}, err
	}
	mine := diff(obs.count.Snapshot(), own, nil)
	stats, err := commandStats(ctx, obs.rdb)
	if err != nil {
		return taskCount{}, err
	}
	sent, err := mon.Stop()
	if err != nil {
		return taskCount{}, fmt.Errorf("redis-cli monitor: %w", err)
	}
	// The monitor also saw the observer's commands from before the reset.
	return taskCount{res: res, executed: diff(stats, nil, mine), sent: diff(sent, own, mine)}, nil
}

// add reports a task count as a table row and a note.
func (c taskCount) add(t *Table, what, command string) {
	n := float64(c.res.Hosts)
	beats := c.sent["hset"] + c.sent["zadd"] // heartbeat pipelines, and progress HSETs
	t.Add(Row{Bench: "4 Redis", Case: what,
		Figure:  fmt.Sprintf("%.1f requests, %.1f executed per host per task", float64(total(c.sent))/n, float64(total(c.executed))/n),
		Ratio:   fmt.Sprintf("README: about 6 requests; task took %s", seconds(c.res.Elapsed)),
		Command: command})
	t.Note("4 %s: requests per host (MONITOR, scripts' inner commands left out): %s; HSET+ZADD (heartbeats, progress) are %.1f of them. "+
		"Executed (INFO commandstats): %s.", what, perCommand(c.sent, n, ""), float64(beats)/n, perCommand(c.executed, n, ""))
}
