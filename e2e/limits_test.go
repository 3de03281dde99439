package e2e

import (
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"
)

// Client and key rpm limits (per instance, per wall-clock minute) through
// the real wiring. The minute turning over is tested on a fake clock in
// extproc (TestClientLimitsPerMinute, TestKeyLimitsPerMinute); here a run
// that straddles a minute boundary is run again instead of waiting for a
// fresh minute.
func TestRequestsPerMinuteLimits(t *testing.T) {
	for attempt := 1; ; attempt++ {
		minute := time.Now().Unix() / 60
		err := requestsPerMinuteLimits(t)
		if time.Now().Unix()/60 == minute {
			if err != nil {
				t.Fatal(err)
			}
			return
		}
		if attempt == 2 {
			t.Fatalf("two runs straddled a minute boundary (last: %v)", err)
		}
	}
}

// requestsPerMinuteLimits runs the scenario on a fresh gateway and returns
// what went wrong; it is only meaningful when it ran within one minute.
func requestsPerMinuteLimits(t *testing.T) error {
	g := startGateway(t, `
settings:
  strategy: round_robin
  auth: {mode: client_keys}
keys:
  k1: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k1, limits: {rpm: 2}}
  k2: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k2}
clients:
  small: {name: small, token_sha256: "`+sha256hex("km-test-small")+`", limits: {rpm: 3}}
  big: {name: big, token_sha256: "`+sha256hex("km-test-big")+`"}
`)
	send := func(token string) (int, []byte, string) {
		resp, b := g.do("POST", "/v1/chat/completions", map[string]string{"authorization": "Bearer " + token}, `{"model":"gpt-4o","messages":[]}`)
		return resp.StatusCode, b, resp.Header.Get("Retry-After")
	}
	for i := range 3 {
		if st, b, _ := send("km-test-small"); st != 200 {
			return fmt.Errorf("request %d of a 3 rpm client: %d %s", i+1, st, b)
		}
	}
	st, b, ra := send("km-test-small")
	var e struct{ Error struct{ Type, Code string } }
	json.Unmarshal(b, &e)
	if st != 429 || e.Error.Code != "rate_limit_exceeded" || e.Error.Type != "requests" {
		return fmt.Errorf("4th request of a 3 rpm client: %d %s, want 429 rate_limit_exceeded", st, b)
	}
	if n, _ := strconv.Atoi(ra); n < 1 || n > 60 {
		return fmt.Errorf("Retry-After %q, want the seconds left in the minute", ra)
	}
	// k1 allows 2 per minute: it served 2 of the first 3 in rotation at most;
	// from now on everything goes to k2.
	for range 6 {
		if st, b, _ := send("km-test-big"); st != 200 {
			return fmt.Errorf("big client: %d %s", st, b)
		}
	}
	k1 := 0
	for _, r := range g.requests() {
		if r.Credential == "sk-test-k1" {
			k1++
		}
	}
	if k1 != 2 || len(g.requests()) != 9 {
		return fmt.Errorf("k1 served %d of %d requests, want exactly its 2 per minute", k1, len(g.requests()))
	}
	return nil
}
