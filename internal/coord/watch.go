package coord

import (
	"context"
	"fmt"
	"strconv"
	"time"
)

// WatchState is what a master in watch mode (run --watch) reports, kept in
// the watch hash and shown by status.
type WatchState struct {
	// Root is the OS path of the watched task tree on the master.
	Root string `json:"root"`
	// Events counts the changes inotify reported; Generations the
	// generations published for them; FullResyncs the periodic full walks.
	Events      int64 `json:"events"`
	Generations int64 `json:"generations"`
	FullResyncs int64 `json:"full_resyncs"`
	// Watched and Unwatched count the tree's directories inotify watches
	// and those it cannot (the watch limit), which are walked every
	// --scan-every instead.
	Watched   int `json:"watched"`
	Unwatched int `json:"unwatched"`
	// LastPublish is the Redis time of the last generation watch mode
	// published (zero: none yet).
	LastPublish time.Time `json:"last_publish,omitzero"`
	// BehindSince is the Redis time of the first generation some alive
	// host has not caught up to yet; zero when every host holds the
	// newest. Now minus BehindSince is the lag of the slowest host.
	BehindSince time.Time `json:"behind_since,omitzero"`
	// Delay, MaxDelay and FullEvery are the master's settings.
	Delay     time.Duration `json:"delay"`
	MaxDelay  time.Duration `json:"max_delay"`
	FullEvery time.Duration `json:"full_every"`
	// Updated is the Redis time the master last wrote the state: a state
	// not updated for long is that of a master that stopped.
	Updated time.Time `json:"updated,omitzero"`
}

// Lag is how long the slowest host has not held the newest content, at
// now (Redis time): zero when every host holds it.
func (w WatchState) Lag(now time.Time) time.Duration {
	if w.BehindSince.IsZero() {
		return 0
	}
	return max(now.Sub(w.BehindSince), 0)
}

// SetWatch records the master's watch state (once a tick).
func (c *Client) SetWatch(ctx context.Context, st WatchState) error {
	msOrZero := func(t time.Time) int64 {
		if t.IsZero() {
			return 0
		}
		return t.UnixMilli()
	}
	err := c.rdb.HSet(ctx, c.keys.Watch(),
		"root", st.Root, "events", st.Events, "generations", st.Generations, "full_resyncs", st.FullResyncs,
		"watched", st.Watched, "unwatched", st.Unwatched,
		"last_publish", msOrZero(st.LastPublish), "behind_since", msOrZero(st.BehindSince),
		"delay_ms", st.Delay.Milliseconds(), "max_delay_ms", st.MaxDelay.Milliseconds(), "full_every_ms", st.FullEvery.Milliseconds(),
		"updated", c.Now().UnixMilli(),
	).Err()
	if err != nil {
		return fmt.Errorf("write %s: %w", c.keys.Watch(), err)
	}
	return nil
}

// parseWatch reads the watch hash; nil when there is none. A field that is
// not a number is an error naming the key.
func parseWatch(key string, h map[string]string) (*WatchState, error) {
	if len(h) == 0 {
		return nil, nil
	}
	num := func(f string) (int64, error) {
		v := h[f]
		if v == "" {
			return 0, nil
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("Redis key %s field %q is %q, not a number: it is corrupt; delete it (redis-cli del %s), the master writes it again", key, f, v, key)
		}
		return n, nil
	}
	var st WatchState
	st.Root = h["root"]
	var err error
	fields := []struct {
		name string
		set  func(int64)
	}{
		{"events", func(n int64) { st.Events = n }},
		{"generations", func(n int64) { st.Generations = n }},
		{"full_resyncs", func(n int64) { st.FullResyncs = n }},
		{"watched", func(n int64) { st.Watched = int(n) }},
		{"unwatched", func(n int64) { st.Unwatched = int(n) }},
		{"last_publish", func(n int64) { st.LastPublish = fromMSInt(n) }},
		{"behind_since", func(n int64) { st.BehindSince = fromMSInt(n) }},
		{"delay_ms", func(n int64) { st.Delay = time.Duration(n) * time.Millisecond }},
		{"max_delay_ms", func(n int64) { st.MaxDelay = time.Duration(n) * time.Millisecond }},
		{"full_every_ms", func(n int64) { st.FullEvery = time.Duration(n) * time.Millisecond }},
		{"updated", func(n int64) { st.Updated = fromMSInt(n) }},
	}
	for _, f := range fields {
		var n int64
		if n, err = num(f.name); err != nil {
			return nil, err
		}
		f.set(n)
	}
	return &st, nil
}

func fromMSInt(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.UnixMilli(n)
}
