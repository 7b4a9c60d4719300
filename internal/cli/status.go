package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fanout/fanout/internal/coord"
)

// statusJSON is the stable JSON form of `fanout-master status --json`.
type statusJSON struct {
	Task       string                   `json:"task"`
	Generation int64                    `json:"generation"`
	Path       string                   `json:"path"`
	Digest     string                   `json:"digest"`
	State      string                   `json:"state"`
	Error      string                   `json:"error,omitempty"`
	Delete     bool                     `json:"delete"`
	Published  *time.Time               `json:"published,omitempty"`
	DoneAt     *time.Time               `json:"done_at,omitempty"`
	Files      int64                    `json:"files"`
	Bytes      int64                    `json:"bytes"`
	Expected   int                      `json:"expected"`
	Finished   int                      `json:"finished"`
	Running    int                      `json:"running"`
	Repairing  int                      `json:"repairing"`
	Lookup     int64                    `json:"lookup"`
	Sources    []string                 `json:"sources"`
	Failures   map[string]coord.Failure `json:"failures"`
	Hosts      []hostJSON               `json:"hosts"`
	// Watch is the master's watch mode (run --watch); absent when no
	// master ever ran with it.
	Watch *watchJSON `json:"watch,omitempty"`
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
	State    string    `json:"state"` // finished, repairing, running, waiting, lost
	Source   string    `json:"source,omitempty"`
	LastSeen time.Time `json:"last_seen"`
	Version  string    `json:"version,omitempty"`
	Error    string    `json:"error,omitempty"`
	// Repairs counts the drift repairs of this generation on the host.
	Repairs int64 `json:"repairs"`
	// The host's pull of this generation: bytes received and planned,
	// average rate and time since it started.
	Done    int64   `json:"bytes_done"`
	Total   int64   `json:"bytes_total"`
	Rate    float64 `json:"rate_bytes_per_sec"`
	Elapsed float64 `json:"elapsed_sec"`
}

// toJSON shapes st for output. now is the time durations are measured
// to: Redis time (st.Now), like every time st holds.
func toJSON(st coord.Status, now time.Time) statusJSON {
	g := st.Generation
	out := statusJSON{
		Task: st.Task, Generation: g.ID, Path: g.Path, Digest: g.Digest, State: st.State, Error: g.Error,
		Delete: g.Delete, Files: g.Files, Bytes: g.Bytes,
		Expected: len(st.Expected), Finished: len(st.Finished), Running: len(st.Running), Repairing: len(st.Repairing),
		Lookup: st.Lookup, Sources: st.Sources, Failures: st.Failures,
	}
	if !g.Published.IsZero() {
		out.Published = &g.Published
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
	out.Hosts = []hostJSON{}
	finished, running, repairing := set(st.Finished), set(st.Running), set(st.Repairing)
	for _, h := range st.Hosts {
		hj := hostJSON{ID: h.ID, Addr: h.Addr, LastSeen: h.LastSeen, Version: h.Version, State: "waiting", Repairs: st.Repairs[h.ID]}
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
		}
		if f, ok := st.Failures[h.ID]; ok {
			hj.Error = f.Error
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
func writeStatusJSON(w io.Writer, st coord.Status, now time.Time) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(toJSON(st, now))
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
		fmt.Fprintf(w, "generation: %d  path %s  state %s", s.Generation, printable(s.Path, maxLine), state)
		if s.Published != nil {
			fmt.Fprintf(w, "  published %s ago", now.Sub(*s.Published).Round(time.Second))
		}
		fmt.Fprintln(w)
		if s.Error != "" {
			fmt.Fprintf(w, "error:      %s\n", printable(s.Error, maxLine))
		}
		if s.Digest != "" {
			digest := s.Digest[:min(len(s.Digest), 16)]
			fmt.Fprintf(w, "content:    %d files, %d bytes, digest %s, delete=%v\n", s.Files, s.Bytes, printable(digest, maxCell), s.Delete)
		}
	}
	fmt.Fprintf(w, "hosts:      %d expected, %d finished, %d running, %d repairing, lookup %d\n", s.Expected, s.Finished, s.Running, s.Repairing, s.Lookup)
	sources := make([]string, len(s.Sources))
	for i, src := range s.Sources {
		sources[i] = printable(src, maxCell)
	}
	fmt.Fprintf(w, "sources:    %s\n", strings.Join(sources, " "))
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
	if len(s.Hosts) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tSTATE\tREPAIRS\tSOURCE\tBYTES\tRATE\tELAPSED\tSEEN\tLAST ERROR")
	for _, h := range s.Hosts {
		bytes, rate, elapsed := "-", "-", "-"
		if h.Total > 0 || h.Done > 0 {
			bytes = fmt.Sprintf("%s/%s", humanBytes(h.Done), humanBytes(h.Total))
			rate = humanBytes(int64(h.Rate)) + "/s"
			elapsed = (time.Duration(h.Elapsed * float64(time.Second))).Round(100 * time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s ago\t%s\n", printable(h.ID, maxCell), h.State, h.Repairs, dash(printable(h.Source, maxCell)),
			bytes, rate, elapsed, now.Sub(h.LastSeen).Round(time.Second), dash(printable(h.Error, maxCell)))
	}
	tw.Flush()
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
