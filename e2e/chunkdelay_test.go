package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// pacedSSE is an upstream whose chat completions stream n events, gap
// apart, each carrying the time it was written ("t", Unix ns).
func pacedSSE(n int, gap time.Duration) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			w.Header().Set("content-type", "application/json")
			io.WriteString(w, `{"object":"list","data":[{"id":"gpt-4o","object":"model"}]}`)
			return
		}
		io.Copy(io.Discard, r.Body)
		w.Header().Set("content-type", "text/event-stream")
		f := w.(http.Flusher)
		for i := range n {
			if i > 0 {
				time.Sleep(gap)
			}
			fmt.Fprintf(w, "data: {\"t\":%d,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"w \"}}]}\n\n", time.Now().UnixNano())
			f.Flush()
		}
		io.WriteString(w, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":40}}\n\ndata: [DONE]\n\n")
	}
}

// TestChunkDelay measures each SSE event's delay from the upstream's write
// to the client's read through the emulated Envoy, with the response body
// off keymux's Process stream (the default) and switched to STREAMED
// (--usage-from-body: a round trip to keymux per chunk). The delays are
// logged (BENCHMARKS.md); the test checks which path each run took.
func TestChunkDelay(t *testing.T) {
	up := httptest.NewServer(pacedSSE(40, 20*time.Millisecond))
	t.Cleanup(up.Close)
	cfg := `keys:
  k1: {provider: openai_compatible, base_url: "` + up.URL + `/v1", secret: sk-test-k1}
`
	for _, tc := range []struct {
		name   string
		args   []string
		bodies bool // response body messages reach keymux
	}{
		{"body off keymux", nil, false},
		{"usage from body (STREAMED)", []string{"--usage-from-body"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := startGateway(t, cfg, tc.args...)
			var delays []time.Duration
			for range 5 {
				req, _ := http.NewRequest("POST", g.url+"/v1/chat/completions", strings.NewReader(`{"model":"gpt-4o","stream":true,"messages":[]}`))
				req.Header.Set("content-type", "application/json")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				sc := bufio.NewScanner(resp.Body)
				for sc.Scan() {
					ts, ok := strings.CutPrefix(sc.Text(), `data: {"t":`)
					if !ok {
						continue
					}
					ns, err := strconv.ParseInt(ts[:strings.IndexByte(ts, ',')], 10, 64)
					if err != nil {
						t.Fatal(err)
					}
					delays = append(delays, time.Since(time.Unix(0, ns)))
				}
				resp.Body.Close()
			}
			if len(delays) != 200 {
				t.Fatalf("%d events, want 200", len(delays))
			}
			slices.Sort(delays)
			t.Logf("per-chunk delay over %d events: p50 %v, p90 %v, p99 %v, max %v", len(delays),
				delays[len(delays)/2], delays[len(delays)*9/10], delays[len(delays)*99/100], delays[len(delays)-1])
			if n := g.responseBodyMessages(); (n > 0) != tc.bodies {
				t.Errorf("%d response body messages, want them: %v", n, tc.bodies)
			}
		})
	}
}
