package cli

import (
	"github.com/spf13/pflag"

	"github.com/fanout/fanout/internal/exclude"
)

// excludeFlags are --exclude PATTERN (repeatable) and --exclude-from FILE,
// which add up, in that order.
type excludeFlags struct {
	list []string
	from []string
}

func (x *excludeFlags) register(fs *pflag.FlagSet, usage string) {
	fs.StringArrayVar(&x.list, "exclude", nil, usage+"; repeatable")
	fs.StringArrayVar(&x.from, "exclude-from", nil, "read exclude patterns from FILE, one a line (blank lines and lines starting with # or ; are skipped); repeatable")
}

// patterns returns every pattern given, checked: a bad one is a usage
// error naming it (and, from a file, the file and line).
func (x *excludeFlags) patterns() ([]string, error) {
	out := append([]string(nil), x.list...)
	for _, f := range x.from {
		ps, err := exclude.ReadFile(f)
		if err != nil {
			return nil, usageError("--exclude-from: %v", err)
		}
		out = append(out, ps...)
	}
	out = exclude.Merge(out)
	if _, err := exclude.Parse(out); err != nil {
		return nil, usageError("--exclude: %v", err)
	}
	return out, nil
}
