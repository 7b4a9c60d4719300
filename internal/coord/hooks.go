package coord

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/redis/go-redis/v9"
)

// HookFormat is the format of the records in the hooks hash. Hook results
// are additive: an older fanout neither reads nor writes that key, and
// every record names its generation, so records a publish by an older
// master left behind are ignored. A reader skips records of a newer format
// than its own, which is how a future change to the record refuses cleanly
// rather than misreads. (Adding the key raised no Proto: no host has to
// refuse another over it.)
const HookFormat = 1

// DefaultTask is the name of the plain task, the one the task key sets: a
// hook configured for it is configured for "default".
const DefaultTask = "default"

// Hook states in a HookRecord.
const (
	HookRunning = "running"
	HookOK      = "ok"
	HookFailed  = "failed"
)

// hookErrorMax bounds the error message of a stored hook record.
const hookErrorMax = 512

// HookRecord is one host's hook run for a generation, as the hooks hash
// stores it (JSON, one per host, replaced by the host's next run).
type HookRecord struct {
	V      int    `json:"v"`
	Gen    int64  `json:"gen"`
	Digest string `json:"digest"`
	Task   string `json:"task"`
	State  string `json:"state"` // running, ok or failed
	// Exit is the hook's exit status; -1 when a signal ended it or it
	// did not start.
	Exit     int  `json:"exit"`
	TimedOut bool `json:"timed_out,omitempty"`
	// Error says why it failed, in one line.
	Error string `json:"error,omitempty"`
	// Output holds the last lines of its output, bounded by the hook
	// package; not escaped for a terminal.
	Output   []string      `json:"output,omitempty"`
	Changed  int           `json:"changed"` // paths the pull changed
	Started  time.Time     `json:"started"`
	Duration time.Duration `json:"duration_ns"`
}

// Ref names the generation of r.
func (r HookRecord) Ref() Ref { return Ref{ID: r.Gen, Digest: r.Digest} }

// hookScript records host's hook run for the current generation and, with
// ARGV typ not empty, appends that event and wakes the master (the
// generation may be done now). Nothing when the generation is not current.
// ARGV: host, gen, digest, record_json, maxlen, type, msg. 1 when recorded.
var hookScript = newScript([]string{"generation", "hooks", "events"}, `
if not isCurrent(ARGV[2], ARGV[3]) then return 0 end
redis.call('HSET', K.hooks, ARGV[1], ARGV[4])
if ARGV[6] ~= '' then
  event(ARGV[5], ARGV[6], ARGV[1], ARGV[2], '', ARGV[7])
  notify('master', 'finish ' .. ARGV[1])
end
return 1
`)

// HookStarted records that host runs its hook for generation rec.Ref():
// while it runs, status does not call the generation done. It is sent
// before the host's finish, so the master never completes a generation
// between the two. Nothing is recorded for a generation that is no longer
// current (ErrStale).
func (c *Client) HookStarted(ctx context.Context, host string, rec HookRecord) error {
	rec.State = HookRunning
	return c.hook(ctx, host, rec, "", "")
}

// HookDone records how host's hook for generation rec.Ref() ended (rec.State
// ok or failed) with a hook or hook_failed event, and wakes the master.
func (c *Client) HookDone(ctx context.Context, host string, rec HookRecord) error {
	typ, msg := "hook", fmt.Sprintf("exit 0 in %s", rec.Duration.Round(time.Millisecond))
	if rec.State != HookOK {
		typ, msg = "hook_failed", rec.Error
		if n := len(rec.Output); n > 0 {
			msg += ": " + rec.Output[n-1]
		}
	}
	return c.hook(ctx, host, rec, typ, msg)
}

func (c *Client) hook(ctx context.Context, host string, rec HookRecord, typ, msg string) error {
	rec.V = HookFormat
	if len(rec.Error) > hookErrorMax {
		rec.Error = rec.Error[:hookErrorMax] + "..."
	}
	if len(msg) > hookErrorMax {
		msg = msg[:hookErrorMax] + "..."
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode hook record: %w", err)
	}
	n, err := c.run(ctx, hookScript, host, host, rec.Gen, rec.Digest, b, eventsMax, typ, msg).Int()
	if err != nil {
		return fmt.Errorf("record hook of generation %s: %w", rec.Ref(), err)
	}
	if n == 0 {
		return fmt.Errorf("record hook of generation %s: %w", rec.Ref(), ErrStale)
	}
	return nil
}

// hookRecords decodes the hooks hash, keeping the records of generation r
// in a format this build reads.
func hookRecords(vals map[string]string, r Ref) map[string]HookRecord {
	out := map[string]HookRecord{}
	for host, v := range vals {
		var rec HookRecord
		if json.Unmarshal([]byte(v), &rec) != nil || rec.V < 1 || rec.V > HookFormat || rec.Ref() != r {
			continue
		}
		out[host] = rec
	}
	return out
}

// Hooks returns the hook records of generation r, by host.
func (c *Client) Hooks(ctx context.Context, r Ref) (map[string]HookRecord, error) {
	vals, err := c.rdb.HGetAll(ctx, c.keys.Hooks()).Result()
	if err != nil && err != redis.Nil {
		return nil, fmt.Errorf("read hooks: %w", err)
	}
	return hookRecords(vals, r), nil
}

// hookFailedHostsMax bounds the hosts a completion record names.
const hookFailedHostsMax = 32

// HookCounts sums up hook records: how many ok, failed and running, and
// the failed hosts, sorted (at most limit of them).
func HookCounts(recs map[string]HookRecord, limit int) (ok, failed, running int, failedHosts []string) {
	for host, r := range recs {
		switch r.State {
		case HookOK:
			ok++
		case HookFailed:
			failed++
			failedHosts = append(failedHosts, host)
		case HookRunning:
			running++
		}
	}
	sort.Strings(failedHosts)
	if len(failedHosts) > limit {
		failedHosts = failedHosts[:limit]
	}
	return ok, failed, running, failedHosts
}
