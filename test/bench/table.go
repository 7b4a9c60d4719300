package main

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// Row is one measured figure of the benchmark table.
type Row struct {
	Bench   string // which benchmark: "1 fan-out", "2 one big file", ...
	Case    string // what was measured within it: "N=8 central"
	Figure  string // the measurement, with its unit
	Ratio   string // the figure as a ratio to its reference, with the expectation
	Command string // the command that produced the figure
}

// Table is the benchmark report: the rows in the order they were measured,
// and notes printed under them.
type Table struct {
	Rows  []Row
	Notes []string
}

// Add appends a row.
func (t *Table) Add(r Row) { t.Rows = append(t.Rows, r) }

// Note appends a note printed under the table.
func (t *Table) Note(format string, args ...any) {
	t.Notes = append(t.Notes, fmt.Sprintf(format, args...))
}

// Markdown renders the table as GitHub markdown, columns padded so the
// text form reads well too. Pipes inside cells are escaped.
func (t *Table) Markdown() string {
	head := []string{"benchmark", "case", "figure", "ratio", "command"}
	cells := [][]string{head}
	for _, r := range t.Rows {
		cells = append(cells, []string{r.Bench, r.Case, r.Figure, r.Ratio, "`" + r.Command + "`"})
	}
	width := make([]int, len(head))
	for _, row := range cells {
		for i, c := range row {
			row[i] = escapeCell(c)
			width[i] = max(width[i], len([]rune(row[i])))
		}
	}
	var b strings.Builder
	line := func(row []string) {
		b.WriteString("|")
		for i, c := range row {
			fmt.Fprintf(&b, " %s%s |", c, strings.Repeat(" ", width[i]-len([]rune(c))))
		}
		b.WriteString("\n")
	}
	line(cells[0])
	b.WriteString("|")
	for _, w := range width {
		fmt.Fprintf(&b, " %s |", strings.Repeat("-", w))
	}
	b.WriteString("\n")
	for _, row := range cells[1:] {
		line(row)
	}
	if len(t.Notes) > 0 {
		b.WriteString("\n")
		for _, n := range t.Notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	return b.String()
}

func escapeCell(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	return strings.ReplaceAll(s, "|", `\|`)
}

// DoublingRounds is ⌈log2(n+1)⌉: the rounds whole-file doubling needs to
// reach n hosts from one origin when every source serves one puller.
func DoublingRounds(n int) int {
	rounds := 0
	for have := 1; have < n+1; have *= 2 {
		rounds++
	}
	return rounds
}

// Ideal is the S/B time of moving size bytes at rate bytes per second.
func Ideal(size, rate int64) time.Duration {
	if rate <= 0 {
		return 0
	}
	return time.Duration(float64(size) / float64(rate) * float64(time.Second))
}

// Ratio is d as a multiple of ref (0 when ref is zero).
func Ratio(d, ref time.Duration) float64 {
	if ref <= 0 {
		return 0
	}
	return float64(d) / float64(ref)
}

// Expected is the textbook fan-out time to n hosts in S/B units for a mode:
// n for one central source, ⌈log2(n+1)⌉ for whole-file doubling, and the
// issue's target of 1.25 for pipelining.
func Expected(mode string, n int) float64 {
	switch mode {
	case ModeCentral:
		return float64(n)
	case ModeDoubling:
		return float64(DoublingRounds(n))
	case ModePipelined:
		return 1.25
	}
	return math.NaN()
}

// MBps is bytes per second in decimal megabytes (10^6 bytes) per second.
func MBps(bytes int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(bytes) / 1e6 / d.Seconds()
}

// seconds prints a duration in seconds with three significant decimals.
func seconds(d time.Duration) string {
	switch s := d.Seconds(); {
	case s >= 100:
		return fmt.Sprintf("%.0f s", s)
	case s >= 10:
		return fmt.Sprintf("%.1f s", s)
	default:
		return fmt.Sprintf("%.2f s", s)
	}
}

// sizeString prints a byte count in binary units.
func sizeString(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
