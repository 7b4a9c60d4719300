package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/fanout/fanout/internal/chunk"
	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/exclude"
	"github.com/fanout/fanout/internal/manifest"
	"github.com/fanout/fanout/internal/master"
	"github.com/fanout/fanout/internal/peer"
	"github.com/fanout/fanout/internal/preview"
)

// dryRun holds what publish --dry-run needs besides Redis: the tree is
// read where it lives (the master's host, under its --root), and the
// manifest the hosts hold is asked of the current generation's origin.
type dryRun struct {
	root, secretFile string
	tls              tlsFlags
	asJSON           bool
}

// dryRunChangesShown bounds the changes the text output lists.
const dryRunChangesShown = 20

// dryRunJSON is the JSON form of publish --dry-run.
type dryRunJSON struct {
	Task   string `json:"task"`
	Delete bool   `json:"delete"`
	// Exclude are the patterns the preview applies: the publish's own.
	Exclude []string `json:"exclude"`
	// BaseExclude are the patterns of the base generation's manifest that
	// the preview does not apply (the master's own --exclude, or an earlier
	// publish's): the dry run cannot tell which.
	BaseExclude []string `json:"base_exclude_not_applied,omitempty"`
	// Base is the generation the hosts hold that the tree is compared
	// with; 0 when none is (no generation, a failed one, another path).
	Base     int64    `json:"base_generation"`
	BasePath string   `json:"base_path,omitempty"`
	Expected int      `json:"expected"`
	Holding  []string `json:"holding"`     // expected hosts that hold the base
	Others   []string `json:"not_holding"` // expected hosts that do not: each pulls up to the whole tree
	// MoveBytes estimates the bytes that would cross the network in all:
	// preview.MoveBytes for each holding host, the whole tree for others.
	MoveBytes int64           `json:"move_bytes"`
	Preview   preview.Preview `json:"preview"`
}

// run previews publishing path (as publish would, with delete and the
// exclude patterns excludes) and prints it; nothing is published.
//
// The master adds its own run --exclude patterns to a task's, and those are
// not known here: the preview applies excludes alone, and lists the base
// manifest's other patterns. Entries of the base that excludes match are
// left out of the comparison, as a minion leaves them out of its scan:
// they are neither fetched nor deleted.
func (d dryRun) run(ctx context.Context, co *coord.Client, path string, del bool, excludes []string, e env) error {
	ex, err := exclude.Parse(excludes)
	if err != nil {
		return usageError("%v", err)
	}
	clean, osPath, err := master.ResolveTask(d.root, path)
	if err != nil {
		return fmt.Errorf("publish --dry-run reads the tree here, under --root %s (run it on the master's host): %w", d.root, err)
	}
	st, err := co.Status(ctx)
	if err != nil {
		return err
	}
	// The publish previewed has no --dest and no --group: every alive host
	// is expected, and the hosts hold the current generation where this
	// one goes only if it has neither.
	var expected []string
	for _, h := range st.Hosts {
		if h.Alive {
			expected = append(expected, h.ID)
		}
	}
	out := dryRunJSON{Task: clean, Delete: del, Exclude: ex.Patterns(), Expected: len(expected), Holding: []string{}, Others: []string{}}
	g := st.Generation
	var base *manifest.Manifest
	if g.ID > 0 && g.State != coord.StateFailed && g.Path == clean && g.Dest == "" && len(g.Groups) == 0 && g.Digest != "" {
		if base, err = d.baseManifest(ctx, co, g); err != nil {
			return err
		}
		out.Base, out.BasePath = g.ID, g.Path
		for _, p := range base.Exclude {
			if !slices.Contains(out.Exclude, p) {
				out.BaseExclude = append(out.BaseExclude, p)
			}
		}
		base = withoutExcluded(base, ex)
	}
	// The new tree in the base's format, so hashes compare; format 3
	// (chunks) with no base, as a fleet of current minions gets.
	opts := manifest.Options{Hash: true, Exclude: ex}
	if base == nil {
		p := chunk.DefaultParams()
		opts.Chunking = &p
	} else {
		opts.Chunking = base.Chunking
	}
	next, err := manifest.Build(ctx, osPath, opts)
	if err != nil {
		return fmt.Errorf("build the manifest of %s: %w", osPath, err)
	}
	if out.Preview, err = preview.Compare(base, next, del); err != nil {
		return err
	}
	finished, repairing := set(st.Finished), set(st.Repairing)
	for _, h := range expected {
		if base != nil && finished[h] && !repairing[h] {
			out.Holding = append(out.Holding, h)
			out.MoveBytes += out.Preview.MoveBytes
		} else {
			out.Others = append(out.Others, h)
			out.MoveBytes += out.Preview.Bytes
		}
	}
	if d.asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	writeDryRun(e.stdout, out)
	return nil
}

// withoutExcluded is m without the entries ex excludes (an entry under an
// excluded directory included), as a minion scanning with ex sees its tree.
func withoutExcluded(m *manifest.Manifest, ex *exclude.List) *manifest.Manifest {
	if ex.Empty() {
		return m
	}
	out := *m
	out.Entries = nil
	for _, e := range m.Entries {
		if e.Path == "." || !ex.Excluded(e.Path, e.Type == manifest.Dir) {
			out.Entries = append(out.Entries, e)
		}
	}
	return &out
}

// baseManifest fetches the manifest of generation g from its origin and
// checks it against the digest in Redis.
func (d dryRun) baseManifest(ctx context.Context, co *coord.Client, g coord.Generation) (*manifest.Manifest, error) {
	secrets, err := peer.LoadSecrets(d.secretFile)
	if err != nil {
		return nil, fmt.Errorf("--secret-file (publish --dry-run asks the origin for the manifest the hosts hold): %w", err)
	}
	_, clientTLS, err := d.tls.configs()
	if err != nil {
		return nil, err
	}
	client := peer.NewClient(peer.ClientConfig{Secrets: secrets, TLS: clientTLS, Now: co.Now}).ForTask(co.Task())
	enc, err := client.Manifest(ctx, g.OriginAddr, g.ID)
	if err != nil {
		return nil, fmt.Errorf("read the manifest of generation %d from its origin %s (is fanout-master running?): %w", g.ID, printable(g.OriginAddr, maxCell), err)
	}
	if got := manifest.Digest(enc); got != g.Digest {
		return nil, fmt.Errorf("the origin %s served a manifest of digest %s for generation %d, Redis says %s", printable(g.OriginAddr, maxCell), got, g.ID, printable(g.Digest, maxCell))
	}
	m, err := manifest.Decode(enc, manifest.DefaultLimits())
	if err != nil {
		return nil, fmt.Errorf("decode the manifest of generation %d: %w", g.ID, err)
	}
	return m, nil
}

// writeDryRun prints a dry run for an operator: the tree, the base, what
// each host would do, the first changes, and the total.
func writeDryRun(w io.Writer, d dryRunJSON) {
	p := d.Preview
	fmt.Fprintln(w, "dry run: nothing was published")
	fmt.Fprintf(w, "task:       %s (delete=%v): %d files, %s, %d directories, %d symlinks\n",
		printable(d.Task, maxLine), d.Delete, p.Files, humanBytes(p.Bytes), p.Dirs, p.Symlinks)
	if len(d.Exclude) > 0 {
		fmt.Fprintf(w, "excluding:  %s (neither sent nor deleted)\n", printable(strings.Join(d.Exclude, " "), maxLine))
	}
	if len(d.BaseExclude) > 0 {
		fmt.Fprintf(w, "not applied: %s, which the held generation also excluded (the master's own --exclude, or the last publish's): pass them with --exclude to preview with them\n",
			printable(strings.Join(d.BaseExclude, " "), maxLine))
	}
	if d.Base == 0 {
		fmt.Fprintln(w, "against:    no generation of this path is current: every host pulls what it lacks, up to the whole tree")
	} else {
		fmt.Fprintf(w, "against:    generation %d, held by %d of %d expected hosts\n", d.Base, len(d.Holding), d.Expected)
		fmt.Fprintf(w, "each host that holds it: fetch %d files (%s; %s to move), remove %d, mkdir %d, symlink %d, meta %d\n",
			p.Fetch, humanBytes(p.FetchBytes), humanBytes(p.MoveBytes), p.Remove, p.Mkdir, p.Symlink, p.Meta)
		if p.Empty() {
			fmt.Fprintln(w, "            nothing changes: publishing makes a new generation that moves no byte to them")
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for i, c := range p.Changes {
			if i == dryRunChangesShown {
				fmt.Fprintf(tw, "  ... and %d more (--json lists them all)\n", len(p.Changes)-i)
				break
			}
			if c.Op == manifest.OpFetch.String() {
				fmt.Fprintf(tw, "  %s\t%s\t%s\n", c.Op, printable(c.Path, maxLine), humanBytes(c.Size))
			} else {
				fmt.Fprintf(tw, "  %s\t%s\n", c.Op, printable(c.Path, maxLine))
			}
		}
		tw.Flush()
	}
	if len(d.Others) > 0 {
		fmt.Fprintf(w, "hosts that do not hold it (%d): each pulls what it lacks, up to %s\n", len(d.Others), humanBytes(p.Bytes))
	}
	fmt.Fprintf(w, "in all:     about %s would move to %d expected hosts\n", humanBytes(d.MoveBytes), d.Expected)
}
