package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sirupsen/logrus"

	"github.com/fanout/fanout/internal/coord"
)

// hub shares one real subscription to the generations channel among every
// simulated minion: real minions each hold a connection for it, which
// thousands of simulated ones cannot (redis-server's clients count against
// the machine's open-file limit). What Redis does per subscriber is
// emulated where it costs commands: go-redis pings an idle subscription
// once a minute (coord.Subscribe), so the hub sends one PING a minute per
// subscriber over the shared pool. Redis's PUBLISH writes to one socket
// instead of N, once per generation: that the simulation leaves out.
//
// Each minion's wake channel (slots handed to it) is served by one
// pattern subscription of the hub (runWakes), which wakes that minion
// alone. Real minions subscribe to their wake channel by name; the one
// pattern costs Redis a match per PUBLISH, about what a name lookup does.
type hub struct {
	channel string
	wakes   func(host string) string // a host's wake channel

	mu   sync.Mutex
	next int
	subs map[int]func(channel, msg string)    // each subscriber's notify, by id
	wake map[string]func(channel, msg string) // by wake channel
}

func newHub(channel string, wakes func(host string) string) *hub {
	return &hub{channel: channel, wakes: wakes, subs: map[int]func(string, string){}, wake: map[string]func(string, string){}}
}

// subscribe gives a minion its share of the subscription: the generations
// channel, and its wake channel if it asks. Its notifications tell which
// channel a message came on, as a real subscription's do.
func (h *hub) subscribe(channels ...string) (*coord.Notifications, error) {
	if len(channels) == 0 || channels[0] != h.channel || len(channels) > 2 ||
		(len(channels) == 2 && !strings.HasPrefix(channels[1], h.wakes(""))) {
		return nil, fmt.Errorf("simulated subscription: only %s and wake channels are shared, not %v", h.channel, channels)
	}
	h.mu.Lock()
	id := h.next
	h.next++
	h.mu.Unlock()
	n, notify := coord.RelayedNotifications(func() error {
		h.mu.Lock()
		delete(h.subs, id)
		if len(channels) == 2 {
			delete(h.wake, channels[1])
		}
		h.mu.Unlock()
		return nil
	})
	h.mu.Lock()
	h.subs[id] = notify
	if len(channels) == 2 {
		h.wake[channels[1]] = notify
	}
	h.mu.Unlock()
	return n, nil
}

// runWakes wakes the minion whose wake channel a message of ps came on,
// until ctx ends.
func (h *hub) runWakes(ctx context.Context, ps *redis.PubSub) {
	defer ps.Close()
	msgs := ps.Channel()
	for {
		var m *redis.Message
		select {
		case <-ctx.Done():
			return
		case m = <-msgs:
		}
		if m == nil {
			return
		}
		h.mu.Lock()
		notify := h.wake[m.Channel]
		h.mu.Unlock()
		if notify != nil {
			notify(m.Channel, m.Payload)
		}
	}
}

// run wakes every subscriber on each message of n until ctx ends, with
// the channel's last message (messages coalesced here are coalesced by a
// real subscriber's notifications too).
func (h *hub) run(ctx context.Context, n *coord.Notifications) {
	defer n.Close()
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.C:
		}
		msg, _ := n.Last(h.channel)
		h.mu.Lock()
		for _, notify := range h.subs {
			notify(h.channel, msg)
		}
		h.mu.Unlock()
	}
}

// keepAlive sends the subscriptions' health-check PINGs, one a minute per
// subscriber, spread evenly, until ctx ends.
func (h *hub) keepAlive(ctx context.Context, rdb *redis.Client) {
	const every = time.Minute
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	due := 0.0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		h.mu.Lock()
		n := len(h.subs)
		h.mu.Unlock()
		due += float64(n) * (100 * time.Millisecond).Seconds() / every.Seconds()
		for ; due >= 1; due-- {
			if err := rdb.Ping(ctx).Err(); err != nil && ctx.Err() == nil {
				continue // counted by nobody: a failed ping is a failed ping
			}
		}
	}
}

// simCoord is a minion's coordinator: the real protocol client (every
// script, every command), with the subscription shared through the hub.
type simCoord struct {
	*coord.Client
	hub *hub
}

// Subscribe hands out a share of the hub's subscription.
func (c simCoord) Subscribe(_ context.Context, channels ...string) (*coord.Notifications, error) {
	return c.hub.subscribe(channels...)
}

// counter is a go-redis hook counting the requests a client sends, by
// command; a script call is counted under the script's name ("evalsha
// claim"), and a pipeline, one round trip, as one request named by its
// commands ("pipeline hexists+zadd+hmget").
type counter struct {
	mu    sync.Mutex
	calls map[string]int64
}

func newCounter() *counter { return &counter{calls: map[string]int64{}} }

// add counts cmds, sent as one request and answered: a claim that found
// no source is counted apart ("evalsha claim extra, none"), as a call
// that bought nothing.
func (c *counter) add(cmds ...redis.Cmder) {
	names := make([]string, len(cmds))
	for i, cmd := range cmds {
		name := strings.ToLower(cmd.Name())
		if name == "evalsha" || name == "eval" {
			if args := cmd.Args(); len(args) > 1 {
				if s := coord.ScriptName(fmt.Sprint(args[1])); s != "" {
					name += " " + s + claimKind(s, args)
					if s == "claim" && foundNoSource(cmd) {
						name += ", none"
					}
				}
			}
		}
		names[i] = name
	}
	name := names[0]
	if len(names) > 1 {
		name = "pipeline " + strings.Join(slices.Compact(names), "+")
	}
	c.mu.Lock()
	c.calls[name]++
	c.mu.Unlock()
}

// claimKind tells a claim script call's kind apart, from its arguments
// (see coord.Client.Claim: ARGV cid is the 8th, rescue the 15th): "" for a
// host's first claim, " extra" for a swarm's extra source, " rescue" for
// a rescue claim.
func claimKind(script string, args []any) string {
	if script != "claim" || len(args) < 3 {
		return ""
	}
	nkeys, err := strconv.Atoi(fmt.Sprint(args[2]))
	if err != nil {
		return ""
	}
	argv := args[3+nkeys:]
	switch {
	case len(argv) >= 15 && fmt.Sprint(argv[14]) == "1":
		return " rescue"
	case len(argv) >= 8 && strings.Contains(fmt.Sprint(argv[7]), "/"):
		return " extra"
	}
	return ""
}

// foundNoSource reports whether a claim script's reply says it found no
// source ("nosource"; not a claim, another refusal or an error).
func foundNoSource(cmd redis.Cmder) bool {
	c, ok := cmd.(*redis.Cmd)
	if !ok {
		return false
	}
	res, ok := c.Val().([]any)
	return ok && len(res) > 0 && res[0] == "nosource"
}

// take returns the counts since the last take and starts again.
func (c *counter) take() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.calls
	c.calls = map[string]int64{}
	return out
}

// DialHook is part of redis.Hook.
func (c *counter) DialHook(next redis.DialHook) redis.DialHook { return next }

// ProcessHook is part of redis.Hook.
func (c *counter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		c.add(cmd)
		return err
	}
}

// ProcessPipelineHook is part of redis.Hook.
func (c *counter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		if len(cmds) > 0 {
			c.add(cmds...)
		}
		return err
	}
}

// logCount counts what the simulated daemons log at warning level and
// above, by message, keeping one example error of each: thousands of
// hosts must not flood the terminal, and a healthy run logs nothing.
type logCount struct {
	mu      sync.Mutex
	counts  map[string]int
	example map[string]string
}

func newLogCount() *logCount {
	return &logCount{counts: map[string]int{}, example: map[string]string{}}
}

// Levels is part of logrus.Hook.
func (l *logCount) Levels() []logrus.Level {
	return []logrus.Level{logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel, logrus.WarnLevel}
}

// Fire is part of logrus.Hook.
func (l *logCount) Fire(e *logrus.Entry) error {
	key := e.Level.String() + ": " + e.Message
	l.mu.Lock()
	defer l.mu.Unlock()
	l.counts[key]++
	if err, ok := e.Data[logrus.ErrorKey].(error); ok && l.example[key] == "" {
		l.example[key] = err.Error()
	}
	return nil
}

// summary lists the messages, most frequent first, with an example error.
func (l *logCount) summary() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for k, n := range l.counts {
		s := fmt.Sprintf("%d × %q", n, k)
		if ex := l.example[k]; ex != "" {
			s += fmt.Sprintf(" (e.g. %s)", ex)
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] > out[j] })
	return out
}

// minus is a − b per command, leaving out the simulator's own measuring
// and counts that are not positive.
func minus(a, b map[string]int64) map[string]int64 {
	out := map[string]int64{}
	for k, v := range a {
		if own(k) {
			continue
		}
		if n := v - b[k]; n > 0 {
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

// perCommand lists counts by command, largest first, each divided by div,
// at most limit of them.
func perCommand(m map[string]int64, div float64, limit int) string {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Slice(names, func(i, j int) bool {
		if m[names[i]] != m[names[j]] {
			return m[names[i]] > m[names[j]]
		}
		return names[i] < names[j]
	})
	var parts []string
	for i, k := range names {
		if i == limit {
			parts = append(parts, "...")
			break
		}
		parts = append(parts, fmt.Sprintf("%s %s", strings.ToUpper(k), short(float64(m[k])/div)))
	}
	return strings.Join(parts, ", ")
}

// short prints a figure with about three significant digits.
func short(v float64) string {
	switch a := math.Abs(v); {
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.3f", v)
}

// errTimeout is a generation that did not complete within -timeout.
var errTimeout = errors.New("the generation was not done in time")
