package extproc

import (
	"strconv"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/telemetry"
)

// lastCall keeps the call the exchange ended with.
type lastCall struct{ c telemetry.Call }

func (o *lastCall) Begin(*telemetry.Call) string { return "" }
func (o *lastCall) End(c *telemetry.Call)        { o.c = *c }

// forwardedExchange is an exchange whose request went upstream with the store's
// first key.
func forwardedExchange(s *Server) *exchange {
	x := newExchange(s)
	x.snap = s.store.Read()
	x.settings = x.snap.Settings()
	x.phase = phaseForwarded
	x.entry = x.snap.Pool("").Entries[0]
	x.call.KeyID = x.entry.Key.ID
	return x
}

// TestResponseClassEveryStatus checks the one vocabulary end to end: for
// every status 100–599 the error class the request path records (and
// telemetry reports) is policy's, a call is a success for telemetry exactly
// when policy gives it no class, and 408 is a timeout.
func TestResponseClassEveryStatus(t *testing.T) {
	st := benchStore(t, 1, "round_robin")
	obs := &lastCall{}
	s, err := New(Config{Store: st, Observer: obs, Now: func() time.Time { return time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC) }, UsageFromBody: true})
	if err != nil {
		t.Fatal(err)
	}
	for status := 100; status <= 599; status++ {
		for _, withKey := range []bool{true, false} {
			x := forwardedExchange(s)
			if !withKey {
				x.entry, x.call.KeyID = nil, ""
			}
			x.onResponseHeaders(&extprocv3.HttpHeaders{EndOfStream: true, Headers: &corev3.HeaderMap{
				Headers: []*corev3.HeaderValue{hv(":status", strconv.Itoa(status))}}})
			x.finish()
			want := policy.StatusKind(status).Class()
			if obs.c.ErrorCode != want {
				t.Errorf("status %d (key %v): class %q, want %q", status, withKey, obs.c.ErrorCode, want)
			}
			if obs.c.Success() != (want == "") {
				t.Errorf("status %d: telemetry success %v, policy class %q", status, obs.c.Success(), want)
			}
		}
	}
	if got := policy.StatusKind(408).Class(); got != policy.ClassTimeout {
		t.Errorf("408 is %q, want %q", got, policy.ClassTimeout)
	}
}

// TestResponseClassFromBody: a 429 or 403 whose JSON body says
// insufficient_quota is an auth failure that parks the key (policy's
// QuotaExhausted); a call without any response is a stream cut.
func TestResponseClassFromBody(t *testing.T) {
	tests := []struct {
		name      string
		status    int
		body      string
		wantClass string
		wantOut   string // the key's ineligibility reason afterwards, "" when eligible
	}{
		{"429 quota code", 429, `{"error":{"code":"insufficient_quota"}}`, policy.ClassAuth, policy.ReasonQuotaExhausted},
		{"403 quota type", 403, `{"error":{"code":"other","type":"insufficient_quota"}}`, policy.ClassAuth, policy.ReasonQuotaExhausted},
		{"429 rate limit", 429, `{"error":{"code":"rate_limit_exceeded"}}`, policy.ClassRateLimited, policy.ReasonCoolingDown},
		{"400 quota body", 400, `{"error":{"code":"insufficient_quota"}}`, policy.ClassClient, ""},
		{"no response", 0, "", policy.ClassStreamCut, ""},
	}
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := benchStore(t, 1, "round_robin")
			obs := &lastCall{}
			s, _ := New(Config{Store: st, Observer: obs, Now: func() time.Time { return now }, UsageFromBody: true})
			x := forwardedExchange(s)
			if tt.status != 0 {
				x.onResponseHeaders(&extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
					hv(":status", strconv.Itoa(tt.status)), hv("content-type", "application/json")}}})
				x.onResponseBody(&extprocv3.HttpBody{Body: []byte(tt.body), EndOfStream: true})
			}
			x.finish()
			if obs.c.ErrorCode != tt.wantClass {
				t.Errorf("class %q, want %q", obs.c.ErrorCode, tt.wantClass)
			}
			ok, why := policy.Eligible(x.entry.Key, x.entry.RT.State(), now)
			got := ""
			if !ok {
				got = why.Reason
			}
			if got != tt.wantOut {
				t.Errorf("key out for %q, want %q", got, tt.wantOut)
			}
		})
	}
}
