package metrics

import "github.com/prometheus/client_golang/prometheus"

// Event delivery results, the result label of pleo_proxy_events_total.
const (
	EventDelivered = "delivered" // the receiver answered 2xx
	EventRetried   = "retried"   // an attempt failed; it will be tried again
	EventDropped   = "dropped"   // given up: too many attempts, too old, or the queue was full
	EventDuplicate = "duplicate" // another replica had already claimed the same change
)

const (
	nameEvents       = namespace + "_events_total"
	nameEventsQueued = namespace + "_events_queued"
)

// EventMetrics counts the credential state-change events sent to PLEO_PROXY_EVENTS_URL. A nil
// *EventMetrics is valid: every method is a no-op.
type EventMetrics struct {
	results *prometheus.CounterVec
	queued  prometheus.Gauge
}

// NewEvents creates and registers the event metrics on reg.
func NewEvents(reg prometheus.Registerer) *EventMetrics {
	m := &EventMetrics{
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: nameEvents,
			Help: "Credential state-change events for PLEO_PROXY_EVENTS_URL, by result: delivered, retried (one failed attempt), dropped (given up) or duplicate (claimed by another replica).",
		}, []string{"result"}),
		queued: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: nameEventsQueued,
			Help: "Credential state-change events waiting to be delivered.",
		}),
	}
	for _, r := range []string{EventDelivered, EventRetried, EventDropped, EventDuplicate} {
		m.results.WithLabelValues(r)
	}
	reg.MustRegister(m.results, m.queued)
	return m
}

// Event counts one event outcome (an Event* constant).
func (m *EventMetrics) Event(result string) {
	if m != nil {
		m.results.WithLabelValues(result).Inc()
	}
}

// SetQueued sets the number of events waiting.
func (m *EventMetrics) SetQueued(n int) {
	if m != nil {
		m.queued.Set(float64(n))
	}
}
