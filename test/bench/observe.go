package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fanout/fanout/internal/coord"
)

// observer is the benchmark's own view of Redis: it publishes tasks and
// follows generations, and counts the commands it sends so they can be
// taken out of INFO commandstats.
type observer struct {
	rdb   *redis.Client
	co    *coord.Client
	count *commandCounter
}

func newObserver(url, prefix string) (*observer, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redis url %q: %w", url, err)
	}
	rdb := redis.NewClient(opts)
	cc := &commandCounter{calls: map[string]int64{}}
	rdb.AddHook(cc)
	return &observer{rdb: rdb, co: coord.New(rdb, coord.Config{Prefix: prefix}), count: cc}, nil
}

func (o *observer) Close() { o.rdb.Close() }

// result is what one generation took.
type result struct {
	Gen        coord.Generation
	Hosts      int           // hosts that finished
	LastFinish time.Time     // timestamp of the last "finish" event of the generation
	Elapsed    time.Duration // Published → LastFinish
	Rounds     int           // depth of the distribution tree, from the claim events
	Claims     int           // claim events: pulls started, retries included
	Fails      int           // fail events
}

// publish sets the task and waits until a generation newer than after is
// done, then reads its events. The elapsed time is from the generation's
// publish time (set by the master) to the Redis timestamp of the last
// finish event, both millisecond clocks of this machine.
func (o *observer) publish(ctx context.Context, path string, after int64, limit time.Duration) (result, error) {
	if err := o.co.SetTask(ctx, path, coord.TaskOptions{}); err != nil {
		return result{}, err
	}
	return o.wait(ctx, after, limit)
}

func (o *observer) wait(ctx context.Context, after int64, limit time.Duration) (result, error) {
	wctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var g coord.Generation
	for {
		var err error
		g, err = o.co.Current(wctx)
		if err == nil && g.ID > after {
			if g.State == coord.StateFailed {
				return result{}, fmt.Errorf("generation %d failed: %s", g.ID, g.Error)
			}
			if g.State == coord.StateDone {
				break
			}
		}
		select {
		case <-wctx.Done():
			return result{}, fmt.Errorf("waiting for generation after %d (last seen %d %s): %w", after, g.ID, g.State, wctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	r := result{Gen: g}
	events, err := o.events(ctx)
	if err != nil {
		return r, err
	}
	want := fmt.Sprint(g.ID)
	for _, e := range events {
		if e.Gen != want {
			continue
		}
		switch e.Type {
		case "finish":
			r.Hosts++
			if e.At.After(r.LastFinish) {
				r.LastFinish = e.At
			}
		case "claim":
			r.Claims++
		case "fail":
			r.Fails++
		}
	}
	r.Elapsed = r.LastFinish.Sub(g.Published)
	if r.Rounds, err = o.co.Rounds(ctx, g.ID); err != nil {
		return r, err
	}
	return r, nil
}

// events reads the whole events stream.
func (o *observer) events(ctx context.Context) ([]coord.Event, error) {
	var all []coord.Event
	after := "0"
	for {
		batch, err := o.co.Events(ctx, after, 0)
		if err != nil {
			return nil, err
		}
		if len(batch) == 0 {
			return all, nil
		}
		all = append(all, batch...)
		after = batch[len(batch)-1].ID
	}
}

// commandCounter is a go-redis hook counting the commands a client sends,
// by lower-case name, pipelines included.
type commandCounter struct {
	mu    sync.Mutex
	calls map[string]int64
}

func (c *commandCounter) add(cmds ...redis.Cmder) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cmd := range cmds {
		c.calls[strings.ToLower(cmd.Name())]++
	}
}

// Snapshot copies the counts so far.
func (c *commandCounter) Snapshot() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int64, len(c.calls))
	for k, v := range c.calls {
		out[k] = v
	}
	return out
}

// DialHook is part of redis.Hook.
func (c *commandCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

// ProcessHook is part of redis.Hook.
func (c *commandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.add(cmd)
		return next(ctx, cmd)
	}
}

// ProcessPipelineHook is part of redis.Hook.
func (c *commandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.add(cmds...)
		return next(ctx, cmds)
	}
}

// diff is after − before − own, per command, keeping positive counts
// only and leaving out the benchmark's own INFO, CONFIG and MONITOR.
func diff(after, before, own map[string]int64) map[string]int64 {
	out := map[string]int64{}
	for k, v := range after {
		if k == "info" || k == "monitor" || k == "config" || strings.HasPrefix(k, "config|") {
			continue
		}
		if n := v - before[k] - own[k]; n > 0 {
			out[k] = n
		}
	}
	return out
}

func total(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}
