package health_test

import (
	"errors"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keymux/keymux/examples/mockupstream"
	"github.com/keymux/keymux/health"
	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
)

func TestProbeRequestPerProvider(t *testing.T) {
	m := startMock(t)
	type probeCase struct {
		name, doc                       string
		wantPath, wantQuery, wantHeader string
		wantValue, wantAnthropicVersion string
	}
	tests := []probeCase{
		{name: "openai", doc: `{"provider":"openai","base_url":"` + m.URL() + `/v1","secret":"sk-test-p1"}`,
			wantPath: "/v1/models", wantHeader: "authorization", wantValue: "Bearer sk-test-p1"},
		{name: "huggingface", doc: `{"provider":"huggingface","base_url":"` + m.URL() + `/hf/v1","secret":"sk-test-p2"}`,
			wantPath: "/hf/v1/models", wantHeader: "authorization", wantValue: "Bearer sk-test-p2"},
		{name: "openai_compatible", doc: `{"provider":"openai_compatible","base_url":"` + m.URL() + `/api/v1","secret":"sk-test-p3"}`,
			wantPath: "/api/v1/models", wantHeader: "authorization", wantValue: "Bearer sk-test-p3"},
		{name: "azure", doc: `{"provider":"azure","base_url":"` + m.URL() + `","secret":"sk-test-p4","azure":{"api_version":"2024-10-21"}}`,
			wantPath: "/openai/models", wantQuery: "api-version=2024-10-21", wantHeader: "api-key", wantValue: "sk-test-p4"},
		{name: "anthropic", doc: `{"provider":"anthropic","base_url":"` + m.URL() + `/v1","secret":"sk-test-p5"}`,
			wantPath: "/v1/models", wantHeader: "x-api-key", wantValue: "sk-test-p5", wantAnthropicVersion: policy.AnthropicVersion},
	}
	// Every provider of the table has its row: adding one to policy's table
	// without a probe expectation fails here.
	for _, spec := range policy.Providers() {
		if !slices.ContainsFunc(tests, func(tt probeCase) bool { return tt.name == string(spec.Provider) }) {
			t.Errorf("provider %s has no probe expectation", spec.Provider)
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := store.ParseKey("k-"+tt.name, []byte(tt.doc), nil)
			if err != nil {
				t.Fatal(err)
			}
			m.Reset()
			res := health.Probe(t.Context(), http.DefaultClient, k, 5*time.Second, nil)
			if !res.OK || res.Status != 200 || res.Error != "" || res.Kind != policy.OutcomeSuccess {
				t.Fatalf("Probe = %+v, want a 200 pass", res)
			}
			reqs := m.Requests()
			if len(reqs) != 1 {
				t.Fatalf("mock got %d requests, want 1", len(reqs))
			}
			r := reqs[0]
			if r.Method != "GET" || r.Path != tt.wantPath || r.RawQuery != tt.wantQuery {
				t.Errorf("request %s %s?%s, want GET %s?%s", r.Method, r.Path, r.RawQuery, tt.wantPath, tt.wantQuery)
			}
			if got := r.Header.Get(tt.wantHeader); got != tt.wantValue {
				t.Errorf("%s = %q, want %q", tt.wantHeader, got, tt.wantValue)
			}
			for _, h := range []string{"authorization", "api-key", "x-api-key"} {
				if h != tt.wantHeader && r.Header.Get(h) != "" {
					t.Errorf("unexpected credential header %s", h)
				}
			}
			if got := r.Header.Get("anthropic-version"); got != tt.wantAnthropicVersion {
				t.Errorf("anthropic-version = %q, want %q", got, tt.wantAnthropicVersion)
			}
			if len(r.Body) != 0 {
				t.Errorf("probe sent a body of %d bytes", len(r.Body))
			}
		})
	}
}

func TestProbeVerdicts(t *testing.T) {
	m := startMock(t)
	const secret = "sk-test-verdict"
	k, err := store.ParseKey("k1", []byte(openAIKey(m, secret)), nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		b         mockupstream.Behaviour
		timeout   time.Duration
		wantOK    bool
		wantKind  policy.OutcomeKind
		wantErr   string
		wantRetry time.Duration // RetryAt - now, ±2s; 0 = zero RetryAt
	}{
		{name: "200", b: mockupstream.Behaviour{}, wantOK: true, wantKind: policy.OutcomeSuccess},
		{name: "401", b: mockupstream.Behaviour{Status: 401}, wantKind: policy.OutcomeAuth, wantErr: "auth: status 401 (invalid_api_key)"},
		{name: "403", b: mockupstream.Behaviour{Status: 403}, wantKind: policy.OutcomeAuth, wantErr: "auth: status 403"},
		{name: "429 rate limited", b: mockupstream.Behaviour{Status: 429, RetryAfter: "30"}, wantOK: true,
			wantKind: policy.OutcomeRateLimited, wantErr: "rate limited (429)", wantRetry: 30 * time.Second},
		{name: "429 quota", b: mockupstream.Behaviour{Status: 429, ErrorCode: "insufficient_quota"},
			wantKind: policy.OutcomeQuota, wantErr: "quota: status 429 (insufficient_quota)"},
		{name: "500", b: mockupstream.Behaviour{Status: 500}, wantKind: policy.OutcomeServer, wantErr: "upstream: status 500"},
		{name: "503", b: mockupstream.Behaviour{Status: 503}, wantKind: policy.OutcomeServer, wantErr: "upstream: status 503"},
		{name: "404 no model list", b: mockupstream.Behaviour{Status: 404}, wantOK: true, wantKind: policy.OutcomeClient,
			wantErr: "probe endpoint answered 404"},
		{name: "timeout", b: mockupstream.Behaviour{Delay: 5 * time.Second}, timeout: 100 * time.Millisecond,
			wantKind: policy.OutcomeTimeout, wantErr: "timeout after 100ms"},
		{name: "secret echoed in error code", b: mockupstream.Behaviour{Status: 401, ErrorCode: secret},
			wantKind: policy.OutcomeAuth, wantErr: "auth: status 401 ([redacted])"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m.Reset()
			m.SetDefault(secret, tt.b)
			timeout := tt.timeout
			if timeout == 0 {
				timeout = 5 * time.Second
			}
			now := time.Now()
			res := health.Probe(t.Context(), http.DefaultClient, k, timeout, nil)
			if res.OK != tt.wantOK || res.Kind != tt.wantKind {
				t.Fatalf("Probe = %+v, want ok=%v kind=%v", res, tt.wantOK, tt.wantKind)
			}
			if !strings.HasPrefix(res.Error, tt.wantErr) || (tt.wantErr == "" && res.Error != "") {
				t.Errorf("Error = %q, want prefix %q", res.Error, tt.wantErr)
			}
			if strings.Contains(res.Error, secret) {
				t.Errorf("Error %q holds the secret", res.Error)
			}
			switch {
			case tt.wantRetry == 0 && !res.RetryAt.IsZero():
				t.Errorf("RetryAt = %v, want zero", res.RetryAt)
			case tt.wantRetry != 0:
				if d := res.RetryAt.Sub(now) - tt.wantRetry; d < -2*time.Second || d > 2*time.Second {
					t.Errorf("RetryAt = now+%v, want now+%v", res.RetryAt.Sub(now), tt.wantRetry)
				}
			}
		})
	}
}

func TestProbeTransportErrors(t *testing.T) {
	// A port that was free a moment ago: connection refused.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	k, err := store.ParseKey("k1", []byte(`{"provider":"openai","base_url":"http://`+addr+`/v1","secret":"sk-test-refused"}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	res := health.Probe(t.Context(), http.DefaultClient, k, time.Second, nil)
	if res.OK || res.Kind != policy.OutcomeServer || res.Error != "connection refused" {
		t.Fatalf("Probe = %+v, want a failure \"connection refused\"", res)
	}

	// Interpret never echoes a URL or the secret of an arbitrary error.
	got := health.Interpret(0, nil, nil, errors.New(`Get "http://h/v1/models": sk-test-x`+"\x00bad"), 0, time.Now(), "sk-test-x")
	if got.OK || strings.Contains(got.Error, "sk-test-x") || strings.ContainsRune(got.Error, 0) {
		t.Errorf("Interpret error = %q", got.Error)
	}
}

// TestInterpretEveryStatus: a probe classifies every status 100–599 as the
// request path does (policy.StatusKind), 408 being a timeout.
func TestInterpretEveryStatus(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	for status := 100; status <= 599; status++ {
		r := health.Interpret(status, nil, nil, nil, time.Millisecond, now, "sk-test")
		if want := policy.StatusKind(status); r.Kind != want {
			t.Errorf("Interpret(%d).Kind = %d, want %d", status, r.Kind, want)
		}
	}
	if r := health.Interpret(408, nil, nil, nil, time.Millisecond, now, "sk-test"); r.OK || r.Kind != policy.OutcomeTimeout || r.Error != "upstream: status 408" {
		t.Errorf("Interpret(408) = %+v, want a failed timeout", r)
	}
}
