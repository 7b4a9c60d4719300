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
	Lookup     int64                    `json:"lookup"`
	Sources    []string                 `json:"sources"`
	Failures   map[string]coord.Failure `json:"failures"`
	Hosts      []hostJSON               `json:"hosts"`
}

type hostJSON struct {
	ID       string    `json:"id"`
	Addr     string    `json:"addr"`
	State    string    `json:"state"` // finished, running, waiting, lost
	Source   string    `json:"source,omitempty"`
	LastSeen time.Time `json:"last_seen"`
	Version  string    `json:"version,omitempty"`
	Error    string    `json:"error,omitempty"`
	// The host's pull of this generation: bytes received and planned,
	// average rate and time since it started.
	Done    int64   `json:"bytes_done"`
	Total   int64   `json:"bytes_total"`
	Rate    float64 `json:"rate_bytes_per_sec"`
	Elapsed float64 `json:"elapsed_sec"`
}

func toJSON(st coord.Status, now time.Time) statusJSON {
	g := st.Generation
	out := statusJSON{
		Task: st.Task, Generation: g.ID, Path: g.Path, Digest: g.Digest, State: st.State, Error: g.Error,
		Delete: g.Delete, Files: g.Files, Bytes: g.Bytes,
		Expected: len(st.Expected), Finished: len(st.Finished), Running: len(st.Running), Lookup: st.Lookup,
		Sources: st.Sources, Failures: st.Failures,
	}
	if !g.Published.IsZero() {
		out.Published = &g.Published
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
	for _, h := range st.Hosts {
		hj := hostJSON{ID: h.ID, Addr: h.Addr, LastSeen: h.LastSeen, Version: h.Version, State: "waiting"}
		switch {
		case slices.Contains(st.Finished, h.ID):
			hj.State = "finished"
		case slices.Contains(st.Running, h.ID):
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

func writeStatusJSON(w io.Writer, st coord.Status, now time.Time) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(toJSON(st, now))
}

func writeStatusText(w io.Writer, st coord.Status, now time.Time) {
	s := toJSON(st, now)
	task := s.Task
	if task == "" {
		task = "(not set)"
	}
	fmt.Fprintf(w, "task:       %s\n", task)
	if s.Generation == 0 {
		fmt.Fprintf(w, "state:      %s\n", s.State)
	} else {
		fmt.Fprintf(w, "generation: %d  path %s  state %s", s.Generation, s.Path, s.State)
		if s.Published != nil {
			fmt.Fprintf(w, "  published %s ago", now.Sub(*s.Published).Round(time.Second))
		}
		fmt.Fprintln(w)
		if s.Error != "" {
			fmt.Fprintf(w, "error:      %s\n", s.Error)
		}
		if s.Digest != "" {
			fmt.Fprintf(w, "content:    %d files, %d bytes, digest %.16s, delete=%v\n", s.Files, s.Bytes, s.Digest, s.Delete)
		}
	}
	fmt.Fprintf(w, "hosts:      %d expected, %d finished, %d running, lookup %d\n", s.Expected, s.Finished, s.Running, s.Lookup)
	fmt.Fprintf(w, "sources:    %s\n", strings.Join(s.Sources, " "))
	if len(s.Hosts) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tSTATE\tSOURCE\tBYTES\tRATE\tELAPSED\tSEEN\tLAST ERROR")
	for _, h := range s.Hosts {
		bytes, rate, elapsed := "-", "-", "-"
		if h.Total > 0 || h.Done > 0 {
			bytes = fmt.Sprintf("%s/%s", humanBytes(h.Done), humanBytes(h.Total))
			rate = humanBytes(int64(h.Rate)) + "/s"
			elapsed = (time.Duration(h.Elapsed * float64(time.Second))).Round(100 * time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s ago\t%s\n", h.ID, h.State, dash(h.Source),
			bytes, rate, elapsed, now.Sub(h.LastSeen).Round(time.Second), dash(oneLine(h.Error)))
	}
	tw.Flush()
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

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 120 {
		s = s[:117] + "..."
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
		s.Finished, s.Expected, humanBytes(done), humanBytes(total), s.Generation, s.State)
}
