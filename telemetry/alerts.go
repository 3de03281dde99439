package telemetry

import (
	"log/slog"
	"time"
)

// Alerts are the thresholds of settings.alerts (the seed's): an error rate
// (a fraction: 0.2 = 20 %) and a token usage per key. A zero threshold turns
// its alert off.
type Alerts struct {
	ErrorRate float64 `json:"error_rate"`
	Usage     uint64  `json:"usage"`
}

// DefaultAlerts apply until SetAlerts is called.
var DefaultAlerts = Alerts{ErrorRate: 0.2, Usage: 10000}

// AlertWindow is the window of the error-rate alert, and AlertMinCalls the
// fewest calls in it for the alert to fire (so that one failure out of one
// call does not page). Anonymous refusals are not calls of the alert (see
// outcome).
const (
	AlertWindow   = 5 * time.Minute
	AlertMinCalls = 10
)

// alertState is guarded by stats.mu.
type alertState struct {
	errorRate bool            // the error-rate alert is active
	usage     map[string]bool // keys over the usage threshold
}

// alertEvent is logged after stats.mu is released.
type alertEvent struct {
	alert     string
	firing    bool
	key       string
	value     float64
	threshold float64
	calls     uint64
}

// evalAlerts checks both thresholds after a call of keyID; it reports a
// crossing once (on the way up and on the way down), never per call.
// Callers hold s.mu.
func (s *stats) evalAlerts(th Alerts, now time.Time, keyID string, ev []alertEvent) []alertEvent {
	w := s.window(now, AlertWindow, false)
	rate, calls := w.alertRatio()
	firing := th.ErrorRate > 0 && calls >= AlertMinCalls && rate > th.ErrorRate
	if firing != s.alerts.errorRate {
		s.alerts.errorRate = firing
		ev = append(ev, alertEvent{alert: AlertErrorRate, firing: firing, value: rate, threshold: th.ErrorRate, calls: calls})
	}
	if keyID == "" {
		return ev
	}
	var used uint64
	if k := s.all.keys[keyID]; k != nil {
		used = k.usage
	}
	over := th.Usage > 0 && used > th.Usage
	if over != s.alerts.usage[keyID] {
		if s.alerts.usage == nil {
			s.alerts.usage = make(map[string]bool)
		}
		s.alerts.usage[keyID] = over
		ev = append(ev, alertEvent{alert: AlertUsage, firing: over, key: keyID, value: float64(used), threshold: float64(th.Usage)})
	}
	return ev
}

func (t *Telemetry) logAlerts(ev []alertEvent) {
	for _, e := range ev {
		attrs := []slog.Attr{slog.String("alert", e.alert), slog.Float64("value", e.value), slog.Float64("threshold", e.threshold)}
		if e.key != "" {
			attrs = append(attrs, slog.String("key_id", e.key))
		}
		if e.alert == AlertErrorRate {
			attrs = append(attrs, slog.String("window", AlertWindow.String()), slog.Uint64("calls", e.calls))
		}
		if e.firing {
			t.log.LogAttrs(t.ctx, slog.LevelWarn, "alert threshold crossed", attrs...)
		} else {
			t.log.LogAttrs(t.ctx, slog.LevelInfo, "alert resolved", attrs...)
		}
	}
}

func (t *Telemetry) thresholds() Alerts {
	if f := t.alertsFn.Load(); f != nil {
		return (*f)()
	}
	return DefaultAlerts
}

// SetAlerts installs the thresholds source (settings.alerts); it is called
// once per call in End, so it must be cheap.
func (t *Telemetry) SetAlerts(f func() Alerts) {
	if f == nil {
		t.alertsFn.Store(nil)
		return
	}
	t.alertsFn.Store(&f)
}
