package coord

import (
	"fmt"
	"slices"
	"strings"
)

// Host groups (publish --group, fanout-minion --group): a generation
// published for groups is pulled only by hosts in one of them, and only
// they are expected. Each host's heartbeat also scores it in the
// heartbeats index of each of its groups (GroupHeartbeats), so the master
// counts a group's alive hosts in O(log N), as it counts the fleet's.

// MaxGroups bounds the groups of a host and of a generation: each is one
// more key a heartbeat writes.
const MaxGroups = 16

// ValidGroups checks group names given to flag: the syntax of a zone, at
// most MaxGroups, none twice.
func ValidGroups(flag string, groups []string) error {
	if len(groups) > MaxGroups {
		return fmt.Errorf("%s: %d groups, more than the limit of %d", flag, len(groups), MaxGroups)
	}
	for i, g := range groups {
		if g == "" {
			return fmt.Errorf("%s: an empty group name: name a group such as web or eu-batch", flag)
		}
		if err := ValidZone(flag, g); err != nil {
			return fmt.Errorf("%s %q: a group is 1 to %d letters, digits, '.', '_' or '-', starting with a letter or digit (such as web or eu-batch)", flag, g, MaxZoneLen)
		}
		if slices.Contains(groups[:i], g) {
			return fmt.Errorf("%s %q given twice", flag, g)
		}
	}
	return nil
}

// InGroups reports whether a host of groups hosts takes a generation for
// want: every host when want is empty, else a host in one of them.
func InGroups(hosts, want []string) bool {
	if len(want) == 0 {
		return true
	}
	for _, g := range hosts {
		if slices.Contains(want, g) {
			return true
		}
	}
	return false
}

// joinGroups and splitGroups are how a generation's groups are stored in
// its hash: comma-separated (a group name holds no comma).
func joinGroups(gs []string) string { return strings.Join(gs, ",") }

func splitGroups(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}
