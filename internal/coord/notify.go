package coord

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Notifications wakes a daemon when something it acts on happened in
// Redis, so it need not poll for it. Messages may be coalesced and may be
// lost (pub/sub has no memory: a message sent while the subscription
// reconnects is gone), so a daemon still polls, slowly, as a safety net.
type Notifications struct {
	C     <-chan struct{} // receives (coalesced) on every message
	close func() error

	// came is nil when the notifications do not tell their channels
	// (SharedNotifications).
	came *came
}

// came collects the channels messages came on since Came last took them,
// and the last message of each channel.
type came struct {
	mu       sync.Mutex
	channels []string
	last     map[string]string
}

// Close ends the subscription.
func (n *Notifications) Close() error { return n.close() }

// Came returns the channels messages came on since its last call (a
// receive on C may stand for several messages, and a message may come
// between a receive and the call) and forgets them; known is false when
// the notifications cannot tell (SharedNotifications), and the caller must
// assume any channel.
func (n *Notifications) Came() (channels []string, known bool) {
	if n.came == nil {
		return nil, false
	}
	n.came.mu.Lock()
	defer n.came.mu.Unlock()
	channels, n.came.channels = n.came.channels, nil
	return channels, true
}

// Last returns the last message that came on channel (whenever it came:
// Came does not forget it); ok is false when none did or the
// notifications cannot tell (SharedNotifications).
func (n *Notifications) Last(channel string) (msg string, ok bool) {
	if n.came == nil {
		return "", false
	}
	n.came.mu.Lock()
	defer n.came.mu.Unlock()
	msg, ok = n.came.last[channel]
	return msg, ok
}

// SharedNotifications returns Notifications fed by c and ended by stop,
// for a process that hands one subscription to many daemons: the minion
// of a named task gets its share of the daemon's subscription of every
// task through a Coordinator whose Subscribe returns this. They do not
// tell their channels (see Came).
func SharedNotifications(c <-chan struct{}, stop func() error) *Notifications {
	return &Notifications{C: c, close: stop}
}

// RelayedNotifications returns Notifications ended by stop and fed by
// notify: each call records message msg on channel (see Came, Last) and
// wakes C. For a process that hands one subscription to many daemons and
// can tell each which channel a message came on: the simulator (test/sim)
// runs thousands of minions over a few Redis connections.
func RelayedNotifications(stop func() error) (n *Notifications, notify func(channel, msg string)) {
	wake := make(chan struct{}, 1)
	n = &Notifications{C: wake, close: stop, came: &came{last: map[string]string{}}}
	return n, func(channel, msg string) {
		n.came.mu.Lock()
		if !slices.Contains(n.came.channels, channel) {
			n.came.channels = append(n.came.channels, channel)
		}
		n.came.last[channel] = msg
		n.came.mu.Unlock()
		select {
		case wake <- struct{}{}:
		default:
		}
	}
}

// Subscribe subscribes to channels (see Keys.GenerationsChannel,
// Keys.MasterChannel, TaskKeyspaceChannel) on a connection of its own, which
// go-redis re-establishes after a failure. The subscription is confirmed
// before Subscribe returns; it lives until ctx ends or Close.
func (c *Client) Subscribe(ctx context.Context, channels ...string) (*Notifications, error) {
	ps := c.rdb.Subscribe(ctx, channels...)
	if _, err := ps.Receive(ctx); err != nil { // the subscription's confirmation
		ps.Close()
		return nil, fmt.Errorf("subscribe to %s: %w", strings.Join(channels, ", "), err)
	}
	n, notify := RelayedNotifications(ps.Close)
	// go-redis pings an idle subscription every 3 s by default: 0.33
	// commands a second per host, more than the rest of an idle minion.
	msgs := ps.Channel(redis.WithChannelHealthCheckInterval(time.Minute))
	go func() {
		for {
			select {
			case <-ctx.Done():
				ps.Close()
				return
			case m, ok := <-msgs:
				if !ok {
					return
				}
				notify(m.Channel, m.Payload)
			}
		}
	}()
	return n, nil
}

// TaskKeyspaceChannel is the keyspace-notification channel of the task key:
// Redis publishes "set" on it when an operator sets the key, once keyspace
// events are on (see EnableKeyspaceEvents).
//
// Keyspace notifications are local to the node that holds the key. On
// Cluster a subscription goes to the primary of the slot of its first
// channel; the task key's channel and Keys.MasterChannel carry the
// prefix's hash tag, so both land on the node that owns the task key
// (ordinary PUBLISH reaches every node's subscribers anyway).
func (c *Client) TaskKeyspaceChannel() string {
	return fmt.Sprintf("__keyspace@%d__:%s", c.cfg.DB, c.keys.Task())
}

// ErrNoKeyspaceEvents means Redis refused to turn keyspace notifications
// on (managed Redis often forbids CONFIG): the master polls the task key.
var ErrNoKeyspaceEvents = errors.New("keyspace notifications are off and CONFIG SET is not allowed")

// EnableKeyspaceEvents makes sure Redis publishes keyspace notifications
// of string commands ("K$" in notify-keyspace-events), adding those flags
// to whatever is configured. ErrNoKeyspaceEvents (wrapped) when it cannot.
//
// CONFIG SET is per node and not kept across a restart. On Cluster it is
// sent to every node, primaries and replicas, so a replica promoted by a
// failover publishes them too; through Sentinel it reaches the primary of
// the moment, so the master calls this again now and then (a promoted
// replica gets it within moments) and reads the task key each tick
// meanwhile. Operators who want no gap set notify-keyspace-events K$ in
// every node's redis.conf.
func (c *Client) EnableKeyspaceEvents(ctx context.Context) error {
	if cc, ok := c.rdb.(interface {
		ForEachShard(context.Context, func(context.Context, *redis.Client) error) error
	}); ok {
		return cc.ForEachShard(ctx, func(ctx context.Context, node *redis.Client) error {
			if err := enableKeyspaceEvents(ctx, node); err != nil {
				return fmt.Errorf("node %s: %w", node.Options().Addr, err)
			}
			return nil
		})
	}
	return enableKeyspaceEvents(ctx, c.rdb)
}

// enableKeyspaceEvents is EnableKeyspaceEvents on the node rdb talks to.
func enableKeyspaceEvents(ctx context.Context, rdb redis.Cmdable) error {
	cur, err := rdb.ConfigGet(ctx, "notify-keyspace-events").Result()
	if err != nil {
		return fmt.Errorf("%w: CONFIG GET: %v", ErrNoKeyspaceEvents, err)
	}
	flags := cur["notify-keyspace-events"]
	want := flags
	if !strings.Contains(want, "K") {
		want += "K"
	}
	if !strings.Contains(want, "$") && !strings.Contains(want, "A") {
		want += "$"
	}
	if want == flags {
		return nil
	}
	if err := rdb.ConfigSet(ctx, "notify-keyspace-events", want).Err(); err != nil {
		return fmt.Errorf("%w: CONFIG SET notify-keyspace-events %s: %v", ErrNoKeyspaceEvents, want, err)
	}
	return nil
}
