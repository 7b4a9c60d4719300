package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/fanout/fanout/internal/coord"
)

func TestPrintable(t *testing.T) {
	tests := []struct {
		name, in string
		limit    int
		want     string
	}{
		{"empty", "", 10, ""},
		{"plain", "/data/m42", 120, "/data/m42"},
		{"space kept", "a b", 120, "a b"},
		{"newline", "a\nforged line", 120, `a\nforged line`},
		{"carriage return and tab", "a\rb\tc", 120, `a\rb\tc`},
		{"ESC sequence", "\x1b[31mred\x1b[0m", 120, `\x1b[31mred\x1b[0m`},
		{"NUL and BEL", "\x00\a", 120, `\x00\x07`},
		{"DEL", "a\x7f", 120, `a\x7f`},
		{"C1 CSI and NEL", "\u009b31m\u0085", 120, `\u009b31m\u0085`},
		{"C1 range ends", "\u0080\u009f", 120, `\u0080\u009f`},
		{"bidi overrides", "\u202a\u202b\u202c\u202d\u202e", 120, `\u202a\u202b\u202c\u202d\u202e`},
		{"bidi isolates", "\u2066\u2067\u2068\u2069", 120, `\u2066\u2067\u2068\u2069`},
		{"RLO reversing a name", "evil\u202etxt.exe", 120, `evil\u202etxt.exe`},
		{"line separator", "a\u2028b", 120, `a\u2028b`},
		{"zero-width and BOM", "a\u200bb\ufeff", 120, `a\u200bb\ufeff`},
		{"tag character", "a\U000e0001", 120, `a\U000e0001`},
		{"invalid UTF-8", "a\xff\xfeb", 120, `a\xff\xfeb`},
		{"cut UTF-8 sequence", "a\xe2\x80", 120, `a\xe2\x80`},
		{"backslash", `a\nb`, 120, `a\\nb`},
		{"unicode text kept", "/ünï code/日本/🙂", 120, "/ünï code/日本/🙂"},
		{"replacement char kept", "\ufffd", 120, "\ufffd"},
		// The limit and the marker (oneLine's 120 and "..." before).
		{"exactly the limit", strings.Repeat("a", 120), 120, strings.Repeat("a", 120)},
		{"one over the limit", strings.Repeat("a", 121), 120, strings.Repeat("a", 117) + "..."},
		{"escapes count", strings.Repeat("\n", 60), 120, strings.Repeat(`\n`, 60)},
		{"escapes over the limit", strings.Repeat("\n", 61), 120, strings.Repeat(`\n`, 58) + "..."},
		{"no half escape", strings.Repeat("a", 115) + "\x1b\x1b", 120, strings.Repeat("a", 115) + "..."},
		{"no half rune", strings.Repeat("日", 50), 120, strings.Repeat("日", 39) + "..."},
		{"limit below the marker", "abcdef", 0, "..."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := printable(tt.in, tt.limit)
			if got != tt.want {
				t.Errorf("printable(%q, %d) = %q, want %q", tt.in, tt.limit, got, tt.want)
			}
			if len(got) > max(tt.limit, len(truncMarker)) {
				t.Errorf("printable(%q, %d) is %d bytes long", tt.in, tt.limit, len(got))
			}
			checkTerminalSafe(t, got)
		})
	}
}

// TestPrintableHuge: a value of megabytes is cut to the limit.
func TestPrintableHuge(t *testing.T) {
	got := printable(strings.Repeat("\x1b", 8<<20), maxLine)
	if len(got) > maxLine || !strings.HasSuffix(got, truncMarker) {
		t.Fatalf("printable of 8 MiB: %d bytes, ends %q", len(got), got[max(0, len(got)-8):])
	}
}

// checkTerminalSafe fails t when out holds anything a terminal acts on
// other than a newline ending a line: invalid UTF-8, a C0 control (tab
// included: tabwriter pads with spaces), DEL, a C1 control, a bidi
// override or isolate, or any other rune that is not graphic.
func checkTerminalSafe(t *testing.T, out string) {
	t.Helper()
	for i, r := range out {
		bad := false
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(out[i:], "\ufffd"):
			bad = true // invalid UTF-8
		case r == '\n':
		case r < 0x20, r == 0x7f, r >= 0x80 && r <= 0x9f:
			bad = true
		case r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069:
			bad = true
		case !unicode.IsGraphic(r):
			bad = true
		}
		if bad {
			t.Errorf("raw %U at byte %d in output:\n%s", r, i, out)
		}
	}
}

// hostile is what someone who can write Redis, or register a host, puts
// in a value to forge a line, colour the terminal and reverse text.
const hostile = "x\nforged line\x1b[31m\u202eevil"

// hostileEscaped is hostile as printable shows it.
const hostileEscaped = `x\nforged line\x1b[31m\u202eevil`

// TestHostileValuesInText renders each text output with hostile values in
// every field read from Redis: each has exactly its lines, the escaped
// value where the raw one was, and no raw control character.
func TestHostileValuesInText(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	st := coord.Status{
		Task: "/data/" + hostile,
		Generation: coord.Generation{ID: 7, Path: "/data/" + hostile, State: coord.StateFailed, Error: "gen " + hostile,
			Digest: "\x1b[2J\x1b[31m" + hostile, Files: 3, Bytes: 300, Published: now.Add(-5 * time.Second)},
		State:    coord.StateFailed + hostile,
		Expected: []string{"ok", hostile},
		Finished: []string{"ok"},
		Running:  []string{hostile},
		Sources:  []string{"ok#0", hostile + "#0"},
		Claims:   map[string]string{hostile: "src " + hostile},
		Failures: map[string]coord.Failure{hostile: {Gen: 7, Error: "err " + hostile}},
		Progress: map[string]coord.Progress{hostile: {Gen: 7, Source: hostile, Done: 10, Total: 300, Started: now.Add(-time.Second)}},
		Hosts: []coord.Host{
			{ID: "ok", Alive: true, LastSeen: now},
			{ID: hostile, Addr: hostile, Version: hostile, Alive: true, LastSeen: now},
		},
	}
	render := map[string]struct {
		write func(*bytes.Buffer)
		lines int
	}{
		// task, generation, error, content, hosts, sources, blank,
		// header, two hosts.
		"status": {func(b *bytes.Buffer) { writeStatusText(b, st, now) }, 10},
		"event": {func(b *bytes.Buffer) {
			writeEvent(b, coord.Event{At: now, Type: "fail" + hostile, Host: hostile, Gen: "7" + hostile, Slot: hostile, Msg: "msg " + hostile})
		}, 1},
		"publish --wait": {func(b *bytes.Buffer) { b.WriteString(waitLine(st, now) + "\n") }, 1},
		"hosts":          {func(b *bytes.Buffer) { writeHosts(b, st.Hosts, now) }, 3},
		"history": {func(b *bytes.Buffer) {
			writeHistory(b, []coord.Completion{{Gen: 7, Path: "/data/" + hostile, Done: now}, {Gen: 6, Path: "/data/ok", Done: now}})
		}, 3},
	}
	for name, r := range render {
		t.Run(name, func(t *testing.T) {
			var b bytes.Buffer
			r.write(&b)
			out := b.String()
			checkTerminalSafe(t, out)
			if n := strings.Count(out, "\n"); n != r.lines || !strings.HasSuffix(out, "\n") {
				t.Errorf("%d lines, want %d:\n%s", n, r.lines, out)
			}
			if !strings.Contains(out, hostileEscaped) {
				t.Errorf("output lacks the escaped value %s:\n%s", hostileEscaped, out)
			}
		})
	}
	// Every hostile field of the status shows, escaped, where it belongs.
	var b bytes.Buffer
	writeStatusText(&b, st, now)
	lines := strings.Split(b.String(), "\n")
	for i, want := range map[int]string{
		0: "task:       /data/" + hostileEscaped,
		1: "generation: 7  path /data/" + hostileEscaped + "  state failed" + hostileEscaped,
		2: "error:      gen " + hostileEscaped,
		3: `digest \x1b[2J\x1b[31mx\nforge,`,
		5: "sources:    ok#0 " + hostileEscaped + "#0",
		9: hostileEscaped + "  running",
	} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("line %d = %q, want it to contain %q", i, lines[i], want)
		}
	}
	if !strings.Contains(lines[9], "src "+hostileEscaped) || !strings.Contains(lines[9], "err "+hostileEscaped) {
		t.Errorf("host row lacks its source or error: %q", lines[9])
	}
	// The error publish --wait returns for a failed generation.
	if err := failedError(st); strings.ContainsAny(err.Error(), "\n\x1b\u202e") {
		t.Errorf("publish --wait error carries raw control characters: %q", err)
	}
}

// TestHostileValuesFromRedis runs status and hosts against a Redis holding
// a hostile task and host: what reaches stdout is escaped.
func TestHostileValuesFromRedis(t *testing.T) {
	mr := miniredis.RunT(t)
	mr.Set("task", "/data/"+hostile)
	rdb := coordClient(t, mr)
	if _, err := rdb.Heartbeat(context.Background(), coord.Host{ID: hostile, Addr: hostile, Version: hostile}, coord.Beat{Register: true}); err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{"FANOUT_REDIS": "redis://" + mr.Addr()}
	for cmd, lines := range map[string]int{
		"status": 7, // task, state, hosts, sources, blank, header, one host
		"hosts":  2,
	} {
		code, out, stderr := run(t, masterMain, vars, cmd)
		if code != exitOK {
			t.Fatalf("%s: code %d, stderr %q", cmd, code, stderr)
		}
		checkTerminalSafe(t, out)
		if n := strings.Count(out, "\n"); n != lines || !strings.Contains(out, hostileEscaped) {
			t.Errorf("%s: %d lines (want %d), escaped value %s present: %v\n%s", cmd, n, lines, hostileEscaped, strings.Contains(out, hostileEscaped), out)
		}
	}
}

// coordClient is a protocol client on mr with the default key prefix.
func coordClient(t *testing.T, mr *miniredis.Miniredis) *coord.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { rdb.Close() })
	return coord.New(rdb, coord.Config{})
}
