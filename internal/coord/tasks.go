package coord

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Named tasks (protocol 7). The plain task key is the task named
// DefaultTask; a named task NAME has the same keys under PREFIX t:NAME:
// (see Keys) and is listed in the tasks set, which publish --name writes
// and retire clears. Daemons hold one runner per task: the master
// publishes and serves each, a minion pulls each. A task set with
// redis-cli alone is found the same way: SADD PREFIX tasks NAME, then SET
// PREFIX t:NAME:task PATH (the master reads the set every --poll, and is
// told at once by a PUBLISH on TasksChannel).

// MaxTaskNameLen bounds a task name: it is part of key names, of the
// peer API's paths and of a state directory's name.
const MaxTaskNameLen = 64

// MaxTasks bounds the named tasks daemons run: each is a runner with its
// own heartbeat, and its own subscription on the master.
const MaxTasks = 64

var taskName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9._-]*$`)

// ValidTaskName checks a task name given to flag: 1 to MaxTaskNameLen
// letters, digits, '.', '_' and '-', starting with a letter (so a name
// is never taken for a generation id). DefaultTask names the plain task.
func ValidTaskName(flag, name string) error {
	if len(name) > MaxTaskNameLen || !taskName.MatchString(name) {
		return fmt.Errorf("%s %q: a task name is 1 to %d letters, digits, '.', '_' or '-', starting with a letter (such as models or web-config)", flag, name, MaxTaskNameLen)
	}
	return nil
}

// ForTask returns a client of the same connection pool, configuration and
// clock that speaks for task name ("" or DefaultTask: the plain task).
func (c *Client) ForTask(name string) *Client {
	return &Client{rdb: c.rdb, cfg: c.cfg, keys: c.keys.ForTask(name), clk: c.clk}
}

// Task is the name of the task this client speaks for.
func (c *Client) Task() string { return c.keys.TaskName() }

// TaskNames returns the named tasks (the tasks set), sorted, without
// DefaultTask. Names that are not valid task names (written by hand) are
// left out: no daemon runs them.
func (c *Client) TaskNames(ctx context.Context) ([]string, error) {
	names, err := c.rdb.SMembers(ctx, c.keys.Tasks()).Result()
	if err != nil {
		return nil, fmt.Errorf("read the task list: %w", err)
	}
	names = slices.DeleteFunc(names, func(n string) bool {
		return n == DefaultTask || ValidTaskName("", n) != nil
	})
	slices.Sort(names)
	return names, nil
}

// ErrTooManyTasks says the task list holds MaxTasks names already.
var ErrTooManyTasks = fmt.Errorf("the task list holds %d named tasks, the most daemons run: retire one first", MaxTasks)

// AddTask lists this client's task in the tasks set and tells the daemons
// (the plain task is always there: a no-op). ErrTooManyTasks when the
// list is full: a task past the limit would stop another on every host.
func (c *Client) AddTask(ctx context.Context) error {
	if c.keys.Name == "" {
		return nil
	}
	n, err := c.runAt(ctx, addTaskScript, keyCtx{}, c.keys.Name, MaxTasks).Int64()
	if err != nil {
		return fmt.Errorf("add task %s to the task list: %w", c.keys.Name, err)
	}
	if n == 0 {
		return fmt.Errorf("add task %s: %w", c.keys.Name, ErrTooManyTasks)
	}
	return nil
}

// addTaskScript adds a name to the task list unless it is full, and
// tells the daemons. ARGV: name, max. 1 when listed.
var addTaskScript = newScript([]string{"tasks"}, `
if redis.call('SISMEMBER', K.tasks, ARGV[1]) == 0 then
  if redis.call('SCARD', K.tasks) >= tonumber(ARGV[2]) then return 0 end
  redis.call('SADD', K.tasks, ARGV[1])
end
redis.call('PUBLISH', K.tasks, 'add ' .. ARGV[1])
return 1
`)

// ErrNoTask says a task named is not in the task list.
var ErrNoTask = errors.New("no such task")

// Retire ends this client's task, a named one: it leaves the task list
// (daemons stop its runner; hosts keep the tree they hold), its task key
// and options are deleted, and a generation still running is failed with
// reason, its free slots withdrawn. Its history and events stay (status
// NAME and history --name read them); publish --name NAME starts it again.
// ErrNoTask when it is not listed.
func (c *Client) Retire(ctx context.Context, reason string) error {
	if c.keys.Name == "" {
		return errors.New("the plain task cannot be retired: cancel its generation, or delete the task key")
	}
	n, err := c.runAt(ctx, retireScript, keyCtx{}, c.keys.Name, reason, eventsMax).Int64()
	if err != nil {
		return fmt.Errorf("retire task %s: %w", c.keys.Name, err)
	}
	if n == 0 {
		return fmt.Errorf("retire task %s: %w", c.keys.Name, ErrNoTask)
	}
	return nil
}

// retireScript removes a named task from the task list and ends it.
// ARGV: name, reason, maxlen. 1 when it was listed.
var retireScript = newScript([]string{"tasks", "task", "taskopts", "generation", "sync", "full", "part", "rescue", "events"}, `
if redis.call('SREM', K.tasks, ARGV[1]) == 0 then return 0 end
redis.call('DEL', K.task, K.taskopts, K.sync, K.full, K.part, K.rescue)
local g = redis.call('HMGET', K.generation, 'id', 'state')
if g[2] == 'running' then
  redis.call('HSET', K.generation, 'state', 'failed', 'error', 'task retired: ' .. ARGV[2])
end
redis.call('HSET', K.generation, 'retired', nowMS())
event(ARGV[3], 'retire', '', g[1] or '0', '', ARGV[2])
redis.call('PUBLISH', K.tasks, 'retire ' .. ARGV[1])
if g[1] then notify('generations', 'retire ' .. g[1]) end
return 1
`)

// TaskEvents tells a daemon that runs every task which task's generation
// may have changed, over one subscription: C receives the task's name
// (DefaultTask for the plain task), Changed (coalesced, never dropped
// while the subscription lives) that the task list changed. Like
// Notifications, messages may be lost in Redis: daemons still read now
// and then.
type TaskEvents struct {
	C       <-chan string
	Changed <-chan struct{}
	close   func() error

	ps   *redis.PubSub
	keys Keys
	host string
}

// Close ends the subscription.
func (t *TaskEvents) Close() error { return t.close() }

// Wake adds task's wake channel for the host (Keys.WakeChannel) to the
// subscription: a slot handed to the host for task arrives on C as the
// task's name. An exact channel, not a pattern: Redis matches every
// PUBLISH against every distinct pattern subscribed, and with one pattern
// a host, 10,000 hosts made each PUBLISH cost milliseconds.
func (t *TaskEvents) Wake(ctx context.Context, task string) error {
	ch := t.keys.ForTask(task).WakeChannel(t.host)
	if err := t.ps.Subscribe(ctx, ch); err != nil {
		return fmt.Errorf("subscribe to %s: %w", ch, err)
	}
	return nil
}

// Unwake removes task's wake channel from the subscription.
func (t *TaskEvents) Unwake(ctx context.Context, task string) error {
	return t.ps.Unsubscribe(ctx, t.keys.ForTask(task).WakeChannel(t.host))
}

// SubscribeTasks subscribes, on one connection, to every task's
// generations channel (a pattern, the same for every host) and to the task
// list's channel; host's wake channels are added per task (Wake). It
// lives until ctx ends or Close.
func (c *Client) SubscribeTasks(ctx context.Context, host string) (*TaskEvents, error) {
	k := c.keys.ForTask("")
	pattern := globEscape(k.Prefix) + "*generations"
	ps := c.rdb.PSubscribe(ctx, pattern)
	if _, err := ps.Receive(ctx); err != nil {
		ps.Close()
		return nil, fmt.Errorf("subscribe to %s: %w", pattern, err)
	}
	if err := ps.Subscribe(ctx, k.TasksChannel()); err != nil {
		ps.Close()
		return nil, fmt.Errorf("subscribe to %s: %w", k.TasksChannel(), err)
	}
	out := make(chan string, 64)
	changed := make(chan struct{}, 1)
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
				name, ok := k.channelTask(m.Channel, host)
				switch {
				case !ok:
				case name == "":
					select {
					case changed <- struct{}{}:
					default: // one is pending: it reads the whole list
					}
				default:
					select {
					case out <- name:
					default: // full: each task's minion polls too
					}
				}
			}
		}
	}()
	return &TaskEvents{C: out, Changed: changed, close: ps.Close, ps: ps, keys: k, host: host}, nil
}

// channelTask maps a channel to the task it is about: a generations
// channel, or host's wake channel, to its task, the task list's channel
// to "" (see TaskEvents).
func (k Keys) channelTask(ch, host string) (string, bool) {
	if ch == k.TasksChannel() {
		return "", true
	}
	if ch == k.GenerationsChannel() || ch == k.WakeChannel(host) {
		return DefaultTask, true
	}
	rest, ok := strings.CutPrefix(ch, k.Prefix+"t:")
	if !ok {
		return "", false
	}
	name, ok := strings.CutSuffix(rest, ":generations")
	if !ok {
		name, ok = strings.CutSuffix(rest, ":wake:"+host)
	}
	if !ok || ValidTaskName("", name) != nil {
		return "", false
	}
	return name, true
}

// globEscape quotes the characters a Redis glob pattern gives a meaning.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
