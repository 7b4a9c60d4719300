// Package metrics holds the Prometheus metrics a fanout host exports on
// /metrics. Each host process owns one registry; nothing is global.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
)

// Metrics are one host's counters, gauges and histograms.
type Metrics struct {
	reg *prometheus.Registry

	BytesServed   prometheus.Counter
	BytesReceived prometheus.Counter
	// BytesResumed counts file bytes an interrupted pull had written that a
	// later pull verified and kept instead of fetching them (minion).
	BytesResumed  prometheus.Counter
	FilesReceived prometheus.Counter
	PullDuration  prometheus.Histogram
	Claims        prometheus.Counter
	// RescueClaims counts rescue slots claimed (see coord.RescueSlot),
	// LeadChanges the times another source took the lead of a pull from a
	// slower one, and Bypasses the times a pull took its slow relay's
	// place on the relay's source (minion).
	RescueClaims prometheus.Counter
	LeadChanges  prometheus.Counter
	Bypasses     prometheus.Counter
	// SourcesBehind counts requests to a partial source that waited and
	// failed while the source had not received what was asked, asked again
	// rather than judged stalled: a host deep in a chain waiting for its
	// front (minion).
	SourcesBehind prometheus.Counter
	Failures      *prometheus.CounterVec // by verdict: ok, dead, bad
	LeaseExpiries prometheus.Counter
	Generation    prometheus.Gauge // the generation this host holds or published
	Published     prometheus.Counter
	RejectedTasks prometheus.Counter
	Unauthorized  prometheus.Counter
	// Drift and repair of a held tree (minion).
	Repairs            prometheus.Counter
	DriftEntries       prometheus.Counter
	Verifications      prometheus.Counter
	VerifyDuration     prometheus.Histogram
	WatchedDirs        prometheus.Gauge
	LeasesRecreated    prometheus.Counter
	FinishesReasserted prometheus.Counter
	// CrossZoneBytes counts file bytes received from sources in another
	// zone (minion; both hosts with a --zone).
	CrossZoneBytes prometheus.Counter
	// Watch mode (master run --watch).
	WatchEvents      prometheus.Counter
	WatchGenerations prometheus.Counter
	WatchFullResyncs prometheus.Counter
	WatchLastPublish prometheus.Gauge
	WatchLag         prometheus.Gauge
	WatchUnwatched   prometheus.Gauge
}

// New registers every metric, plus the Go runtime and process collectors.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	f := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "fanout", Name: name, Help: help})
		reg.MustRegister(c)
		return c
	}
	m := &Metrics{
		reg:                reg,
		BytesServed:        f("bytes_served_total", "File bytes sent to peers."),
		BytesReceived:      f("bytes_received_total", "File bytes received from peers and verified or being verified."),
		BytesResumed:       f("bytes_resumed_total", "File bytes an interrupted pull had written, verified again and kept by a later pull instead of fetched."),
		FilesReceived:      f("files_received_total", "Files received, verified and renamed into place."),
		Claims:             f("claims_total", "Source slots claimed by this host."),
		RescueClaims:       f("rescue_claims_total", "Rescue slots claimed: the source of this host's source (a partial host or the origin), as an extra source."),
		LeadChanges:        f("lead_changes_total", "Times another source of a pull, at least twice as fast, took the lead from a slower one (a slow relay stepped around)."),
		Bypasses:           f("bypasses_total", "Times a pull took the place of its slow relay on the relay's own source; the relay moved to the end of a chain."),
		SourcesBehind:      f("sources_behind_total", "Requests to a partial source that waited past a timeout while the source had not received what was asked (deep in a chain, waiting for its front), asked again rather than judged stalled."),
		LeaseExpiries:      f("lease_expiries_total", "Expired leases reaped (master only)."),
		Published:          f("generations_published_total", "Generations published (master only)."),
		RejectedTasks:      f("tasks_rejected_total", "Task values rejected as bad input (master only)."),
		Unauthorized:       f("unauthorized_requests_total", "Peer requests refused for a bad or missing signature."),
		Repairs:            f("repairs_total", "Drift repairs: the held tree changed on disk and was brought back to the generation."),
		DriftEntries:       f("drift_entries_total", "Entries found changed, missing or extra on disk by verification."),
		Verifications:      f("verifications_total", "Verification passes of the held tree against its manifest."),
		LeasesRecreated:    f("leases_recreated_total", "Leases Redis lost while this host pulled, re-created from the claim record."),
		FinishesReasserted: f("finishes_reasserted_total", "Finishes Redis lost, announced again by a heartbeat."),
		CrossZoneBytes:     f("cross_zone_bytes_received_total", "File bytes received from sources in another zone (both hosts with a --zone)."),
		WatchEvents:        f("watch_events_total", "Changes inotify reported in the watched task tree (master --watch)."),
		WatchGenerations:   f("watch_generations_total", "Generations published because the watched task tree changed (master --watch)."),
		WatchFullResyncs:   f("watch_full_resyncs_total", "Periodic full walks of the watched task tree, --full-every (master --watch)."),
		WatchLastPublish: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "fanout", Name: "watch_last_publish_timestamp_seconds", Help: "Redis time of the last generation watch mode published (master --watch).",
		}),
		WatchLag: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "fanout", Name: "watch_lag_seconds", Help: "How long the slowest host has not held the newest content: since the first generation some host has not caught up to; 0 when every host holds the newest (master --watch).",
		}),
		WatchUnwatched: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "fanout", Name: "watch_unwatched_directories", Help: "Directories of the watched task tree inotify cannot watch (the watch limit), walked every --scan-every instead (master --watch).",
		}),
		VerifyDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "fanout", Name: "verify_duration_seconds", Help: "Time of one verification pass of the held tree.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}),
		WatchedDirs: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "fanout", Name: "watched_directories", Help: "Directories of the held tree watched for changes (inotify); the rest are scanned periodically.",
		}),
		PullDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "fanout", Name: "pull_duration_seconds", Help: "Time from claim to a verified copy.",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 16),
		}),
		Failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "fanout", Name: "pull_failures_total", Help: "Failed pulls by verdict on the source (ok, dead, bad).",
		}, []string{"verdict"}),
		Generation: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "fanout", Name: "generation", Help: "Generation this host holds (minion) or published (master).",
		}),
	}
	reg.MustRegister(m.PullDuration, m.Failures, m.Generation, m.VerifyDuration, m.WatchedDirs, m.WatchLastPublish, m.WatchLag, m.WatchUnwatched)
	for _, v := range []string{"ok", "dead", "bad"} {
		m.Failures.WithLabelValues(v)
	}
	return m
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Value reads a counter's value (0 when it cannot be read).
func Value(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return 0
	}
	return m.GetCounter().GetValue()
}
