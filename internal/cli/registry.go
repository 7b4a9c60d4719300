package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fanout/fanout/internal/coord"
)

var registryHelp = map[string]string{
	"hosts":   "fanout-master hosts: list registered minions with their last heartbeat, address and version.",
	"forget":  "fanout-master forget HOST: remove a host from the registry, the queues and the source slots (for a decommissioned host).",
	"history": "fanout-master history [--name NAME]: completed generations of a task, newest first (time, hosts, bytes, rounds).",
}

func masterRegistry(ctx context.Context, cmd string, args []string, e env) error {
	var c common
	var asJSON bool
	var grace time.Duration
	var n int
	fs := newFlags(e, cmd, registryHelp[cmd])
	c.register(fs)
	if cmd != "forget" {
		fs.BoolVar(&asJSON, "json", false, "print JSON")
	}
	if cmd == "hosts" {
		fs.DurationVar(&grace, "host-grace", 30*time.Second, "a host whose last heartbeat is older than this is no longer expected")
	}
	if cmd == "history" {
		fs.IntVarP(&n, "number", "n", 20, "how many generations to show")
		c.registerTask(fs, "the task whose history to show")
	}
	if err := parse(fs, args, e); err != nil {
		return err
	}
	if err := c.checkTask("--name"); err != nil {
		return err
	}
	want := 0
	if cmd == "forget" {
		want = 1
	}
	if fs.NArg() != want {
		return usageError("%s takes %d arguments, got %d", cmd, want, fs.NArg())
	}
	c.clientName = clientName("fanout-master-"+cmd, "")
	rdb, err := c.redis(ctx)
	if err != nil {
		return err
	}
	defer rdb.Close()
	co := c.coord(rdb, grace)
	now := time.Now()
	switch cmd {
	case "forget":
		// Every task keeps its own queues and heartbeats; the named ones
		// first, while the registry (the plain task's forget removes
		// it) still says which zone and groups to clean.
		names, err := co.TaskNames(ctx)
		if err != nil {
			return err
		}
		for _, name := range append(names, coord.DefaultTask) {
			if err := co.ForTask(name).Forget(ctx, fs.Arg(0)); err != nil {
				return err
			}
		}
		fmt.Fprintf(e.stdout, "forgot %s\n", printable(fs.Arg(0), maxCell))
		return nil
	case "hosts":
		hosts, err := co.Hosts(ctx)
		if err != nil {
			return err
		}
		if asJSON {
			type hostOut struct {
				ID       string    `json:"id"`
				Addr     string    `json:"addr"`
				Version  string    `json:"version"`
				Alive    bool      `json:"alive"`
				LastSeen time.Time `json:"last_seen"`
				Started  time.Time `json:"started"`
				Zone     string    `json:"zone,omitempty"`
			}
			out := []hostOut{}
			for _, h := range hosts {
				out = append(out, hostOut{h.ID, h.Addr, h.Version, h.Alive, h.LastSeen, h.Started, h.Zone})
			}
			return json.NewEncoder(e.stdout).Encode(out)
		}
		return writeHosts(e.stdout, hosts, now)
	default: // history
		recs, err := co.History(ctx, n)
		if err != nil {
			return err
		}
		if asJSON {
			return json.NewEncoder(e.stdout).Encode(recs)
		}
		return writeHistory(e.stdout, recs)
	}
}

// writeHosts prints the hosts table; ids, addresses and versions, read
// from Redis, go through printable.
func writeHosts(w io.Writer, hosts []coord.Host, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tALIVE\tLAST HEARTBEAT\tADDR\tZONE\tVERSION\tUP")
	for _, h := range hosts {
		up := "-"
		if !h.Started.IsZero() {
			up = now.Sub(h.Started).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%v\t%s ago\t%s\t%s\t%s\t%s\n", printable(h.ID, maxCell), h.Alive, now.Sub(h.LastSeen).Round(time.Second),
			printable(h.Addr, maxCell), dash(printable(h.Zone, maxCell)), dash(printable(h.Version, maxCell)), up)
	}
	return tw.Flush()
}

// writeHistory prints the history table; paths, read from Redis, go
// through printable.
func writeHistory(w io.Writer, recs []coord.Completion) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GEN\tDONE\tPATH\tRELEASE\tHOSTS\tFILES\tBYTES\tROUNDS\tTOOK\tHOOKS")
	for _, r := range recs {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%d\t%s\t%d\t%s\t%s\n", r.Gen, r.Done.Local().Format(time.DateTime), printable(r.Path, maxLine),
			release(r.Atomic, r.Rollback, r.Switch), r.Hosts, r.Files, humanBytes(r.Bytes), r.Rounds, r.Elapsed.Round(time.Millisecond), historyHooks(r))
	}
	return tw.Flush()
}

// release describes how a generation was switched to: "-" in place,
// "atomic, keep N", or "rollback to GEN", and ", fleet switch".
func release(atomic int, rollback int64, switchMode string) string {
	s := "-"
	switch {
	case rollback > 0:
		s = fmt.Sprintf("rollback to %d", rollback)
	case atomic > 0:
		s = fmt.Sprintf("atomic, keep %d", atomic)
	}
	if switchMode == coord.SwitchFleet {
		s += ", fleet switch"
	}
	return s
}

// historyHooks is a completion's HOOKS column: "-" when no host ran a
// hook, else the ok count and the hook failed count with the first
// failed hosts.
func historyHooks(r coord.Completion) string {
	if r.HooksOK == 0 && r.HooksFailed == 0 {
		return "-"
	}
	s := fmt.Sprintf("%d ok", r.HooksOK)
	if r.HooksFailed > 0 {
		hosts := make([]string, 0, 3)
		for i, h := range r.HookFailedHosts {
			if i == 3 {
				hosts = append(hosts, "...")
				break
			}
			hosts = append(hosts, printable(h, maxCell))
		}
		s += fmt.Sprintf(", %d hook failed (%s)", r.HooksFailed, strings.Join(hosts, " "))
	}
	return s
}
