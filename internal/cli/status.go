package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fanout/fanout/internal/coord"
)

// statusJSON is the stable JSON form of `fanout-master status --json`.
type statusJSON struct {
	// Name is the task's name (default for the plain task); Task is its
	// task key's value.
	Name string `json:"name"`
	// Tasks lists the named tasks, in the plain task's status when no
	// task was asked for (status NAME shows one).
	Tasks      []string `json:"tasks,omitempty"`
	Task       string   `json:"task"`
	Generation int64    `json:"generation"`
	Path       string   `json:"path"`
	Dest       string   `json:"dest,omitempty"`
	Groups     []string `json:"groups,omitempty"`
	Digest     string   `json:"digest"`
	State      string   `json:"state"`
	Error      string   `json:"error,omitempty"`
	Delete     bool     `json:"delete"`
	Compress   bool     `json:"compress"`
	// Atomic is the releases hosts keep (publish --atomic); Rollback the
	// generation a rollback returns to; Switch "fleet" for a generation
	// whose hosts switch at once, SwitchAt the master's order, Switched
	// the hosts that switched.
	Atomic    int                      `json:"atomic,omitempty"`
	Rollback  int64                    `json:"rollback,omitempty"`
	Switch    string                   `json:"switch,omitempty"`
	SwitchAt  *time.Time               `json:"switch_at,omitempty"`
	Switched  *int                     `json:"switched,omitempty"`
	Published *time.Time               `json:"published,omitempty"`
	DoneAt    *time.Time               `json:"done_at,omitempty"`
	Files     int64                    `json:"files"`
	Bytes     int64                    `json:"bytes"`
	Expected  int                      `json:"expected"`
	Finished  int                      `json:"finished"`
	Running   int                      `json:"running"`
	Repairing int                      `json:"repairing"`
	Lookup    int64                    `json:"lookup"`
	Sources   []string                 `json:"sources"`
	Failures  map[string]coord.Failure `json:"failures"`
	// SlowRelays lists the hosts with SlowUplink.
	SlowRelays []string `json:"slow_relays,omitempty"`
	// Hooks counts the hosts' hook runs of this generation; absent when
	// no host ran a hook for it.
	Hooks *hookCountsJSON `json:"hooks,omitempty"`
	Hosts []hostJSON      `json:"hosts"`
	// OriginZone is the origin's zone; CrossZone the bytes of this
	// generation that hosts received from sources of another zone.
	OriginZone string `json:"origin_zone,omitempty"`
	CrossZone  int64  `json:"cross_zone_bytes"`
	// Watch is the master's watch mode (run --watch); absent when no
	// master ever ran with it.
	Watch *watchJSON `json:"watch,omitempty"`
}

// hookCountsJSON sums up the hook runs of a generation.
type hookCountsJSON struct {
	OK      int `json:"ok"`
	Failed  int `json:"failed"`
	Running int `json:"running"`
}

// hookJSON is one host's hook run of the generation.
type hookJSON struct {
	Task     string    `json:"task"`
	State    string    `json:"state"` // running, ok, failed
	Exit     int       `json:"exit"`  // -1: killed by a signal, or never started
	TimedOut bool      `json:"timed_out,omitempty"`
	Error    string    `json:"error,omitempty"`
	Output   []string  `json:"output,omitempty"` // its last lines
	Changed  int       `json:"changed"`          // paths the pull changed
	Started  time.Time `json:"started"`
	Duration float64   `json:"duration_sec"`
}

// watchJSON is the watch-mode part of status --json.
type watchJSON struct {
	Root        string     `json:"root"`
	Events      int64      `json:"events"`
	Generations int64      `json:"generations"`
	FullResyncs int64      `json:"full_resyncs"`
	Watched     int        `json:"watched_dirs"`
	Unwatched   int        `json:"unwatched_dirs"`
	LastPublish *time.Time `json:"last_publish,omitempty"`
	// LagSec is how long the slowest host has not held the newest
	// content (0: every host holds it).
	LagSec    float64   `json:"lag_sec"`
	Delay     float64   `json:"delay_sec"`
	MaxDelay  float64   `json:"max_delay_sec"`
	FullEvery float64   `json:"full_every_sec"`
	Updated   time.Time `json:"updated"`
}

type hostJSON struct {
	ID       string    `json:"id"`
	Addr     string    `json:"addr"`
	State    string    `json:"state"` // finished, repairing, running, waiting, lost, idle (no generation), "other-group" (of the generation's groups)
	Source   string    `json:"source,omitempty"`
	LastSeen time.Time `json:"last_seen"`
	Version  string    `json:"version,omitempty"`
	Error    string    `json:"error,omitempty"`
	// Repairs counts the drift repairs of this generation on the host.
	Repairs int64 `json:"repairs"`
	// SlowUplink: the host relayed this generation too slowly for the
	// host behind it, which took its place on its source; it serves
	// nobody else until the next generation.
	SlowUplink bool `json:"slow_uplink,omitempty"`
	// Zone is the host's --zone; CrossZone the bytes it received in this
	// generation from sources of another zone.
	Zone      string `json:"zone,omitempty"`
	CrossZone int64  `json:"cross_zone_bytes"`
	// The host's pull of this generation: bytes received and planned,
	// average rate and time since it started.
	Done    int64   `json:"bytes_done"`
	Total   int64   `json:"bytes_total"`
	Rate    float64 `json:"rate_bytes_per_sec"`
	Elapsed float64 `json:"elapsed_sec"`
	// Hook is the host's hook run of this generation; absent when it
	// ran none. A failed hook leaves the host finished: it holds the tree.
	Hook *hookJSON `json:"hook,omitempty"`
}

// toJSON shapes st for output. now is the time durations are measured
// to: Redis time (st.Now), like every time st holds.
func toJSON(st coord.Status, now time.Time) statusJSON {
	g := st.Generation
	out := statusJSON{
		Name: st.Name, Task: st.Task, Generation: g.ID, Path: g.Path, Dest: g.Dest, Groups: g.Groups, Digest: g.Digest, State: st.State, Error: g.Error,
		Delete: g.Delete, Compress: g.Compress, Atomic: g.Atomic, Rollback: g.Rollback, Switch: g.Switch, Files: g.Files, Bytes: g.Bytes,
		Expected: len(st.Expected), Finished: len(st.Finished), Running: len(st.Running), Repairing: len(st.Repairing),
		Lookup: st.Lookup, Sources: st.Sources, Failures: st.Failures, SlowRelays: st.SlowRelays,
		OriginZone: g.OriginZone, CrossZone: st.CrossZoneTotal(),
	}
	if !g.Published.IsZero() {
		out.Published = &g.Published
	}
	if g.Switch == coord.SwitchFleet {
		n := len(st.Switched)
		out.Switched = &n
		if !g.SwitchAt.IsZero() {
			out.SwitchAt = &g.SwitchAt
		}
	}
	if w := st.Watch; w != nil {
		out.Watch = &watchJSON{
			Root: w.Root, Events: w.Events, Generations: w.Generations, FullResyncs: w.FullResyncs,
			Watched: w.Watched, Unwatched: w.Unwatched, LagSec: w.Lag(now).Seconds(),
			Delay: w.Delay.Seconds(), MaxDelay: w.MaxDelay.Seconds(), FullEvery: w.FullEvery.Seconds(), Updated: w.Updated,
		}
		if !w.LastPublish.IsZero() {
			out.Watch.LastPublish = &w.LastPublish
		}
	}
	if !g.DoneAt.IsZero() {
		out.DoneAt = &g.DoneAt
	}
	if out.Sources == nil {
		out.Sources = []string{}
	}
	if out.Failures == nil {
		out.Failures = map[string]coord.Failure{}
	}
	if len(st.Hooks) > 0 {
		ok, failed, running, _ := coord.HookCounts(st.Hooks, 0)
		out.Hooks = &hookCountsJSON{OK: ok, Failed: failed, Running: running}
	}
	out.Hosts = []hostJSON{}
	finished, running, repairing, slow := set(st.Finished), set(st.Running), set(st.Repairing), set(st.SlowRelays)
	for _, h := range st.Hosts {
		hj := hostJSON{ID: h.ID, Addr: h.Addr, LastSeen: h.LastSeen, Version: h.Version, State: "waiting", Repairs: st.Repairs[h.ID],
			Zone: h.Zone, CrossZone: st.CrossZone[h.ID], SlowUplink: slow[h.ID]}
		switch {
		case finished[h.ID] && repairing[h.ID]:
			// Counted as finished; its tree drifted and is being repaired.
			hj.State = "repairing"
			hj.Source = st.Claims[h.ID]
		case finished[h.ID]:
			hj.State = "finished"
		case running[h.ID]:
			hj.State = "running"
			hj.Source = st.Claims[h.ID]
		case !h.Alive:
			hj.State = "lost"
		case g.ID == 0:
			hj.State = "idle" // no generation to wait for
		case !coord.InGroups(h.Groups, g.Groups):
			hj.State = "other-group" // neither pulls it nor is expected
		}
		if f, ok := st.Failures[h.ID]; ok {
			hj.Error = f.Error
		}
		if r, ok := st.Hooks[h.ID]; ok {
			hj.Hook = &hookJSON{
				Task: r.Task, State: r.State, Exit: r.Exit, TimedOut: r.TimedOut, Error: r.Error, Output: r.Output,
				Changed: r.Changed, Started: r.Started, Duration: r.Duration.Seconds(),
			}
		}
		if p, ok := st.Progress[h.ID]; ok {
			hj.Done, hj.Total = p.Done, p.Total
			end := p.Updated
			if hj.State == "running" {
				end = now
			}
			if el := end.Sub(p.Started).Seconds(); el > 0 {
				hj.Elapsed = el
				hj.Rate = float64(p.Done) / el
			}
			if hj.Source == "" && hj.State == "running" {
				hj.Source = p.Source
			}
		}
		out.Hosts = append(out.Hosts, hj)
	}
	return out
}

func set(ss []string) map[string]bool {
	m := make(map[string]bool, len(ss))
	for _, s := range ss {
		m[s] = true
	}
	return m
}

// writeStatusJSON prints the status as JSON for programs. Values are
// whole, of any length Redis holds (the text output cuts them), and
// encoding/json escapes the C0 controls, ESC included, but passes DEL, the
// C1 controls and the bidi overrides through as UTF-8: a program reads
// them as data; a terminal needs the text output.
func writeStatusJSON(w io.Writer, st coord.Status, now time.Time, named ...string) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	s := toJSON(st, now)
	s.Tasks = named
	return enc.Encode(s)
}

// writeStatusText prints the status for an operator's terminal. Every
// value read from Redis goes through printable: a task, host id or error
// message cannot add lines or send escape sequences.
func writeStatusText(w io.Writer, st coord.Status, now time.Time) {
	s := toJSON(st, now)
	task := printable(s.Task, maxLine)
	if s.Task == "" {
		task = "(not set)"
	}
	fmt.Fprintf(w, "task:       %s\n", task)
	state := printable(s.State, maxCell)
	if s.Generation == 0 {
		fmt.Fprintf(w, "state:      %s\n", state)
	} else {
		fmt.Fprintf(w, "generation: %d  path %s", s.Generation, printable(s.Path, maxLine))
		if s.Dest != "" {
			fmt.Fprintf(w, "  dest %s", printable(s.Dest, maxLine))
		}
		if len(s.Groups) > 0 {
			fmt.Fprintf(w, "  groups %s", printable(strings.Join(s.Groups, ","), maxLine))
		}
		if r := release(s.Atomic, s.Rollback, s.Switch); r != "-" {
			fmt.Fprintf(w, "  (%s", r)
			switch {
			case s.Switched == nil:
			case s.SwitchAt == nil:
				fmt.Fprint(w, ": waiting for every host to hold the release")
			default:
				fmt.Fprintf(w, ": ordered %s ago, %d switched", now.Sub(*s.SwitchAt).Round(time.Second), *s.Switched)
			}
			fmt.Fprint(w, ")")
		}
		fmt.Fprintf(w, "  state %s", state)
		if s.Published != nil {
			fmt.Fprintf(w, "  published %s ago", now.Sub(*s.Published).Round(time.Second))
		}
		fmt.Fprintln(w)
		if s.Error != "" {
			fmt.Fprintf(w, "error:      %s\n", printable(s.Error, maxLine))
		}
		if s.Digest != "" {
			digest := s.Digest[:min(len(s.Digest), 16)]
			fmt.Fprintf(w, "content:    %d files, %d bytes, digest %s, delete=%v, compress=%v\n", s.Files, s.Bytes, printable(digest, maxCell), s.Delete, s.Compress)
		}
	}
	fmt.Fprintf(w, "hosts:      %d expected, %d finished, %d running, %d repairing, lookup %d\n", s.Expected, s.Finished, s.Running, s.Repairing, s.Lookup)
	sources := make([]string, len(s.Sources))
	for i, src := range s.Sources {
		sources[i] = printable(src, maxCell)
	}
	fmt.Fprintf(w, "sources:    %s\n", strings.Join(sources, " "))
	slowUplinks(w, s.SlowRelays)
	if wj := s.Watch; wj != nil {
		last := "none yet"
		if wj.LastPublish != nil {
			last = now.Sub(*wj.LastPublish).Round(100*time.Millisecond).String() + " ago"
		}
		lag := "every host holds the newest"
		if wj.LagSec > 0 {
			lag = "slowest host " + (time.Duration(wj.LagSec * float64(time.Second))).Round(100*time.Millisecond).String() + " behind the newest"
		}
		fmt.Fprintf(w, "watch:      %s  %d events, %d generations published (last %s), %d full walks; %s\n",
			printable(wj.Root, maxLine), wj.Events, wj.Generations, last, wj.FullResyncs, lag)
		fmt.Fprintf(w, "            %d directories watched", wj.Watched)
		if wj.Unwatched > 0 {
			fmt.Fprintf(w, ", %d NOT watched (inotify limit: raise fs.inotify.max_user_watches; walked every --scan-every)", wj.Unwatched)
		}
		fmt.Fprintf(w, "; state written %s ago\n", now.Sub(wj.Updated).Round(time.Second))
	}
	zoned := zonesLine(w, s)
	if len(s.Hosts) == 0 {
		return
	}
	if s.Hooks != nil {
		fmt.Fprintf(w, "hooks:      %d ok, %d failed, %d running\n", s.Hooks.OK, s.Hooks.Failed, s.Hooks.Running)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	hookCol := func(h hostJSON) string { return "" }
	hookHead := ""
	if s.Hooks != nil {
		hookHead = "HOOK\t"
		hookCol = func(h hostJSON) string { return hookCell(h.Hook) + "\t" }
	}
	zoneHead := ""
	if zoned {
		zoneHead = "ZONE\tCROSS-ZONE\t"
	}
	fmt.Fprintln(tw, "HOST\t"+zoneHead+"STATE\tREPAIRS\t"+hookHead+"SOURCE\tBYTES\tRATE\tELAPSED\tSEEN\tLAST ERROR")
	for _, h := range s.Hosts {
		bytes, rate, elapsed := "-", "-", "-"
		if h.Total > 0 || h.Done > 0 {
			bytes = fmt.Sprintf("%s/%s", humanBytes(h.Done), humanBytes(h.Total))
			rate = humanBytes(int64(h.Rate)) + "/s"
			elapsed = (time.Duration(h.Elapsed * float64(time.Second))).Round(100 * time.Millisecond).String()
		}
		id := printable(h.ID, maxCell)
		if zoned {
			cross := "-"
			if h.CrossZone > 0 {
				cross = humanBytes(h.CrossZone)
			}
			id += "\t" + dash(printable(h.Zone, maxCell)) + "\t" + cross
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s%s\t%s\t%s\t%s\t%s ago\t%s\n", id, h.State, h.Repairs, hookCol(h), dash(printable(h.Source, maxCell)),
			bytes, rate, elapsed, now.Sub(h.LastSeen).Round(time.Second), dash(printable(h.Error, maxCell)))
	}
	tw.Flush()
	writeHookFailures(w, s.Hosts)
}

// slowShown is how many slow uplinks the text status names (status
// --json lists them all).
const slowShown = 10

// slowUplinks prints the hosts bypassed as slow relays this generation,
// if any: the first slowShown, escaped, and how many more.
func slowUplinks(w io.Writer, hosts []string) {
	if len(hosts) == 0 {
		return
	}
	names := make([]string, 0, min(len(hosts), slowShown))
	for _, h := range hosts[:min(len(hosts), slowShown)] {
		names = append(names, printable(h, maxCell))
	}
	more := ""
	if len(hosts) > slowShown {
		more = fmt.Sprintf(" and %d more", len(hosts)-slowShown)
	}
	fmt.Fprintf(w, "slow up:    %s%s (relayed too slowly for the host behind, which took their place; they serve nobody else this generation: check their uplinks)\n", strings.Join(names, " "), more)
}

// hookCell is a host's HOOK column: "-", "running", "ok", or "failed"
// with the exit status or the timeout.
func hookCell(h *hookJSON) string {
	switch {
	case h == nil:
		return "-"
	case h.State != coord.HookFailed:
		return printable(h.State, maxCell)
	case h.TimedOut:
		return "failed:timeout"
	case h.Exit >= 0:
		return fmt.Sprintf("failed:exit=%d", h.Exit)
	}
	return "failed"
}

// hookFailuresShown is how many failed hooks the text status details
// (status --json lists them all).
const hookFailuresShown = 10

// writeHookFailures prints, under the host table, each failed hook (the
// first hookFailuresShown): host, why, and its last output lines, every
// value escaped.
func writeHookFailures(w io.Writer, hosts []hostJSON) {
	shown, failed := 0, 0
	for _, h := range hosts {
		if h.Hook == nil || h.Hook.State != coord.HookFailed {
			continue
		}
		failed++
		if shown == hookFailuresShown {
			continue
		}
		if shown == 0 {
			fmt.Fprintln(w)
		}
		shown++
		fmt.Fprintf(w, "hook failed on %s: %s after %s (task %s, %d changed paths); the host holds the generation\n",
			printable(h.ID, maxCell), printable(h.Hook.Error, maxCell),
			time.Duration(h.Hook.Duration*float64(time.Second)).Round(time.Millisecond),
			printable(h.Hook.Task, maxCell), h.Hook.Changed)
		for _, l := range h.Hook.Output {
			fmt.Fprintf(w, "    | %s\n", printable(l, 2*maxCell+len(truncMarker)+8))
		}
	}
	if failed > shown {
		fmt.Fprintf(w, "... and %d more failed hooks (fanout-master status --json lists them all)\n", failed-shown)
	}
}

// zonesLine prints the zones line when any host (or the origin) has a
// zone: how many hosts each zone has, hosts without one, and the bytes of
// this generation that crossed zones. It reports whether it printed it.
func zonesLine(w io.Writer, s statusJSON) bool {
	count := map[string]int{}
	none := 0
	for _, h := range s.Hosts {
		if h.Zone == "" {
			none++
			continue
		}
		count[h.Zone]++
	}
	if len(count) == 0 && s.OriginZone == "" && s.CrossZone == 0 {
		return false
	}
	zones := make([]string, 0, len(count))
	for z := range count {
		zones = append(zones, z)
	}
	slices.Sort(zones)
	parts := make([]string, 0, len(zones)+2)
	for _, z := range zones {
		parts = append(parts, fmt.Sprintf("%s %d", printable(z, maxCell), count[z]))
	}
	if none > 0 {
		parts = append(parts, fmt.Sprintf("none %d", none))
	}
	origin := "-"
	if s.OriginZone != "" {
		origin = printable(s.OriginZone, maxCell)
	}
	fmt.Fprintf(w, "zones:      %s (hosts); origin in %s; %s crossed zones\n", strings.Join(parts, ", "), origin, humanBytes(s.CrossZone))
	return true
}

// waitLine is the progress line publish --wait prints for st.
func waitLine(st coord.Status, now time.Time) string {
	return fmt.Sprintf("generation %d: %s, %d/%d hosts finished, %d running  %s", st.Generation.ID, printable(st.State, maxCell),
		len(st.Finished), len(st.Expected), len(st.Running), progressLine(toJSON(st, now), 30))
}

// writeEvent prints one protocol event as a line of status --follow.
func writeEvent(w io.Writer, ev coord.Event) {
	fmt.Fprintf(w, "%s  %-13s gen %-4s %-16s %-16s %s\n", ev.At.Format("15:04:05.000"), printable(ev.Type, maxCell),
		printable(ev.Gen, maxCell), dash(printable(ev.Host, maxCell)), dash(printable(ev.Slot, maxCell)), printable(ev.Msg, maxCell))
}

// humanBytes prints a byte count with a binary unit.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// taskProgress is the whole task's progress: bytes held by finished hosts
// plus bytes received by running ones, over content size times expected
// hosts.
func taskProgress(s statusJSON) (done, total int64) {
	total = s.Bytes * int64(s.Expected)
	for _, h := range s.Hosts {
		switch h.State {
		case "finished":
			done += s.Bytes
		case "running":
			done += min(h.Done, s.Bytes)
		}
	}
	return min(done, total), total
}

// progressLine renders the whole task's progress as one line with a bar.
func progressLine(s statusJSON, width int) string {
	done, total := taskProgress(s)
	frac := 0.0
	if total > 0 {
		frac = float64(done) / float64(total)
	}
	if s.State == "done" {
		frac = 1
	}
	fill := int(frac * float64(width))
	return fmt.Sprintf("[%s%s] %3.0f%%  %d/%d hosts  %s/%s  generation %d %s",
		strings.Repeat("#", fill), strings.Repeat(".", width-fill), frac*100,
		s.Finished, s.Expected, humanBytes(done), humanBytes(total), s.Generation, printable(s.State, maxCell))
}
