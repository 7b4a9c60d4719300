package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/coord"
)

// hookStatus is a done generation on three hosts: a's hook succeeded, b's
// failed with hostile output, c's timed out.
func hookStatus(now time.Time) coord.Status {
	rec := func(state string, exit int) coord.HookRecord {
		return coord.HookRecord{V: 1, Gen: 7, Task: "default", State: state, Exit: exit, Changed: 2, Started: now.Add(-time.Second), Duration: 1500 * time.Millisecond}
	}
	b := rec(coord.HookFailed, 3)
	b.Error, b.Output = "exit status 3", []string{"reloading", "bad " + hostile}
	c := rec(coord.HookFailed, -1)
	c.TimedOut, c.Error = true, "killed at the 1s timeout (--hook-timeout)"
	return coord.Status{
		Task:       "/data/m42",
		Generation: coord.Generation{ID: 7, Path: "/data/m42", State: coord.StateDone, Digest: strings.Repeat("ab", 32), Files: 3, Bytes: 300, Published: now.Add(-5 * time.Second)},
		State:      coord.StateDone,
		Expected:   []string{"a", "b", "c"},
		Finished:   []string{"a", "b", "c"},
		Hooks:      map[string]coord.HookRecord{"a": rec(coord.HookOK, 0), "b": b, "c": c},
		Hosts: []coord.Host{
			{ID: "a", Alive: true, LastSeen: now}, {ID: "b", Alive: true, LastSeen: now}, {ID: "c", Alive: true, LastSeen: now},
		},
	}
}

// TestStatusShowsHooks: a failed hook shows in the text status (count,
// column, the reason and last lines, escaped) and in the JSON, and the
// host stays finished.
func TestStatusShowsHooks(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	st := hookStatus(now)
	var b bytes.Buffer
	writeStatusText(&b, st, now)
	out := b.String()
	checkTerminalSafe(t, out)
	for _, want := range []string{
		"hooks:      1 ok, 2 failed, 0 running",
		"hook failed on b: exit status 3 after 1.5s (task default, 2 changed paths); the host holds the generation",
		"    | reloading\n    | bad " + hostileEscaped + "\n",
		"hook failed on c: killed at the 1s timeout (--hook-timeout)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status text lacks %q:\n%s", want, out)
		}
	}
	rows := map[string][2]string{"a": {"finished", "ok"}, "b": {"finished", "failed:exit=3"}, "c": {"finished", "failed:timeout"}}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 4 {
			if want, ok := rows[f[0]]; ok {
				delete(rows, f[0])
				if f[1] != want[0] || f[3] != want[1] {
					t.Errorf("host %s: state %s, hook %s; want %s, %s", f[0], f[1], f[3], want[0], want[1])
				}
			}
		}
	}
	if len(rows) != 0 {
		t.Errorf("host rows missing: %v\n%s", rows, out)
	}
	var js bytes.Buffer
	if err := writeStatusJSON(&js, st, now); err != nil {
		t.Fatal(err)
	}
	var got statusJSON
	if err := json.Unmarshal(js.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if got.Hooks == nil || *got.Hooks != (hookCountsJSON{OK: 1, Failed: 2}) || got.Finished != 3 {
		t.Fatalf("JSON hooks %+v, finished %d", got.Hooks, got.Finished)
	}
	hb := got.Hosts[1].Hook
	if got.Hosts[1].State != "finished" || hb == nil || hb.State != "failed" || hb.Exit != 3 || hb.Output[1] != "bad "+hostile || hb.Duration != 1.5 {
		t.Errorf("JSON host b: %+v %+v", got.Hosts[1], hb)
	}
	if hc := got.Hosts[2].Hook; hc == nil || !hc.TimedOut || hc.Exit != -1 {
		t.Errorf("JSON host c: %+v", hc)
	}
	// Without hook records, no hooks line, no HOOK column.
	st.Hooks = nil
	b.Reset()
	writeStatusText(&b, st, now)
	if strings.Contains(b.String(), "hook") || strings.Contains(b.String(), "HOOK") {
		t.Errorf("hooks shown with no records:\n%s", b.String())
	}
}

// TestStatusBoundsHookFailures: a fleet of failed hooks lists the first
// ones in the text and counts the rest.
func TestStatusBoundsHookFailures(t *testing.T) {
	now := time.Now()
	st := hookStatus(now)
	st.Hosts = nil
	for i := range 25 {
		id := string(rune('A'+i)) + "host"
		st.Hosts = append(st.Hosts, coord.Host{ID: id, Alive: true, LastSeen: now})
		st.Hooks[id] = coord.HookRecord{V: 1, Gen: 7, State: coord.HookFailed, Exit: 1, Error: "exit status 1"}
	}
	var b bytes.Buffer
	writeStatusText(&b, st, now)
	if n := strings.Count(b.String(), "hook failed on "); n != hookFailuresShown || !strings.Contains(b.String(), "... and 15 more failed hooks") {
		t.Errorf("%d failures detailed:\n%s", n, b.String())
	}
}

func TestHistoryShowsHooks(t *testing.T) {
	now := time.Now()
	var b bytes.Buffer
	err := writeHistory(&b, []coord.Completion{
		{Gen: 9, Path: "/data/m42", Done: now, HooksOK: 6, HooksFailed: 5, HookFailedHosts: []string{"a", "b", hostile, "d", "e"}},
		{Gen: 8, Path: "/data/m42", Done: now, HooksOK: 8},
		{Gen: 7, Path: "/data/m42", Done: now},
	})
	if err != nil {
		t.Fatal(err)
	}
	out := b.String()
	checkTerminalSafe(t, out)
	lines := strings.Split(out, "\n")
	if !strings.HasSuffix(lines[1], "6 ok, 5 hook failed (a b "+hostileEscaped+" ...)") || !strings.HasSuffix(lines[2], "8 ok") || !strings.HasSuffix(lines[3], "-") {
		t.Errorf("history:\n%s", out)
	}
}

// TestHookFlagErrors: bad hook flags are usage errors naming the flag,
// before anything connects to Redis; serve takes no hook flags.
func TestHookFlagErrors(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--on-sync", "default"}, "--on-sync \"default\": give NAME=COMMAND"},
		{[]string{"sync", "--on-sync", "../x=true"}, "task name"},
		{[]string{"run", "--hook-dir", "/does/not/exist"}, "--hook-dir /does/not/exist"},
		{[]string{"run", "--on-sync", "default=true", "--hook-timeout", "0s"}, "--hook-timeout"},
		{[]string{"serve", "--on-sync", "default=true"}, "unknown flag: --on-sync"},
	} {
		args := append(tt.args, "--root", "/", "--state-dir", t.TempDir())
		code, _, stderr := run(t, minionMain, nil, args...)
		if code != exitUsage || !strings.Contains(stderr, tt.want) {
			t.Errorf("%q: exit %d, stderr %q; want %d and %q", tt.args, code, stderr, exitUsage, tt.want)
		}
	}
	// FANOUT_ON_SYNC sets one hook like the flag: a bad one is refused the same way.
	code, _, stderr := run(t, minionMain, map[string]string{"FANOUT_ON_SYNC": "nocommand"}, "run", "--root", "/", "--state-dir", t.TempDir())
	if code != exitUsage || !strings.Contains(stderr, "NAME=COMMAND") {
		t.Errorf("FANOUT_ON_SYNC: exit %d, stderr %q", code, stderr)
	}
}
