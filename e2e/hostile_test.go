package e2e

import (
	"bufio"
	"encoding/json"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/testutil/deep"
	"github.com/keymux/keymux/testutil/wait"
)

const oneKey = `
keys:
  k1: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k1}
`

// errorOf decodes an OpenAI-style error body.
func errorOf(t *testing.T, b []byte) (code, param, message string) {
	t.Helper()
	var e struct {
		Error struct {
			Message string  `json:"message"`
			Param   *string `json:"param"`
			Code    string  `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("error body is not JSON: %q", b)
	}
	if e.Error.Param != nil {
		param = *e.Error.Param
	}
	return e.Error.Code, param, e.Error.Message
}

// procStatus reads one "Name:  N kB" line of /proc/self/status, in bytes.
func procStatus(t *testing.T, name string) uint64 {
	t.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatalf("RSS is measured on Linux: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+":"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/self/status", name)
	return 0
}

// TestDeepBodyRefused: a body of the default max_body_bytes (8 MiB) nested
// millions of levels deep, sent through the Envoy emulator, is refused with
// 400 invalid_json naming the limit, never reaches the upstream, and the
// peak RSS of the process (keymux, the emulator, the mock and this test)
// stays within 100 MiB of what it was before the request. Before the
// nesting limit, validating such a body grew one goroutine stack to
// ~512 MiB.
func TestDeepBodyRefused(t *testing.T) {
	g := startGateway(t, oneKey)
	hdr := map[string]string{"content-type": "application/json"}
	body := string(deep.Body(policy.DefaultMaxBodyBytes))
	if len(body) > policy.DefaultMaxBodyBytes || len(body) < policy.DefaultMaxBodyBytes-64 {
		t.Fatalf("body of %d bytes", len(body))
	}
	// Warm up the connections and buffers on the way.
	if resp, b := g.do("POST", "/v1/chat/completions", hdr, `{"model":"gpt-4o","messages":[],"pad":"`+strings.Repeat("x", len(body)-50)+`"}`); resp.StatusCode != 200 {
		t.Fatalf("warm-up: %d %s", resp.StatusCode, b)
	}
	runtime.GC()
	debug.FreeOSMemory()
	// Reset the peak RSS (VmHWM) to the current RSS.
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Fatalf("reset the peak RSS: %v", err)
	}
	before := procStatus(t, "VmRSS")
	reached := len(g.requests())

	resp, b := g.do("POST", "/v1/chat/completions", hdr, body)

	peak := procStatus(t, "VmHWM")
	t.Logf("RSS before the request %d MiB, peak during it %d MiB (+%d MiB)", before>>20, peak>>20, (peak-min(peak, before))>>20)
	if resp.StatusCode != 400 {
		t.Fatalf("status %d, want 400: %.200s", resp.StatusCode, b)
	}
	code, _, msg := errorOf(t, b)
	const want = "The JSON body of your request nests arrays and objects more than 256 levels deep (the limit, max_json_depth)."
	if code != "invalid_json" || msg != want {
		t.Errorf("error %s %q, want invalid_json %q", code, msg, want)
	}
	if peak > before+100<<20 {
		t.Errorf("peak RSS %d MiB is %d MiB above the %d MiB before the request, want < 100 MiB", peak>>20, (peak-before)>>20, before>>20)
	}
	if n := len(g.requests()) - reached; n != 0 {
		t.Errorf("%d refused requests reached the upstream", n)
	}
	if resp, b := g.do("POST", "/v1/chat/completions", hdr, `{"model":"gpt-4o","messages":[]}`); resp.StatusCode != 200 {
		t.Fatalf("after: %d %s", resp.StatusCode, b)
	}
}

// TestDeepBodyLimitSetting: settings.max_json_depth moves the limit.
func TestDeepBodyLimitSetting(t *testing.T) {
	g := startGateway(t, "settings: {max_json_depth: 3}\n"+oneKey)
	hdr := map[string]string{"content-type": "application/json"}
	if resp, b := g.do("POST", "/v1/chat/completions", hdr, `{"model":"gpt-4o","messages":[{"content":"hi"}]}`); resp.StatusCode != 200 {
		t.Fatalf("3 levels: %d %s", resp.StatusCode, b)
	}
	resp, b := g.do("POST", "/v1/chat/completions", hdr, `{"model":"gpt-4o","messages":[{"content":[]}]}`)
	if code, _, msg := errorOf(t, b); resp.StatusCode != 400 || code != "invalid_json" || !strings.Contains(msg, "more than 3 levels deep") {
		t.Fatalf("4 levels: %d %s", resp.StatusCode, b)
	}
}

// TestNonUTF8Refused: a model, user or prompt_cache_key that is not UTF-8
// gets 400 invalid_value naming the field, and /metrics keeps answering.
func TestNonUTF8Refused(t *testing.T) {
	g := startGateway(t, oneKey)
	hdr := map[string]string{"content-type": "application/json"}
	for _, tc := range []struct{ body, param string }{
		{"{\"model\":\"gpt-4o\xff\",\"messages\":[]}", "model"},
		{"{\"model\":\"\xc3\",\"messages\":[]}", "model"},
		{"{\"model\":\"gpt-4o\",\"user\":\"u\xed\xa0\x80\",\"messages\":[]}", "user"},
		{"{\"model\":\"gpt-4o\",\"prompt_cache_key\":\"\xfe\",\"messages\":[]}", "prompt_cache_key"},
	} {
		resp, b := g.do("POST", "/v1/chat/completions", hdr, tc.body)
		code, param, msg := errorOf(t, b)
		if want := "'" + tc.param + "' is not valid UTF-8."; resp.StatusCode != 400 || code != "invalid_value" || param != tc.param || msg != want {
			t.Errorf("%q: %d %s %s %q, want 400 invalid_value %s %q", tc.body, resp.StatusCode, code, param, msg, tc.param, want)
		}
	}
	metrics := string(g.getAdmin("/metrics")) // fails the test unless 200
	if !strings.Contains(metrics, "keymux_requests_total") {
		t.Fatalf("/metrics lacks keymux_requests_total")
	}
	if resp, b := g.do("POST", "/v1/chat/completions", hdr, `{"model":"gpt-4o","messages":[]}`); resp.StatusCode != 200 {
		t.Fatalf("after: %d %s", resp.StatusCode, b)
	}
	g.getAdmin("/metrics")
}

// TestMadeUpModelsFoldToOther: model names no key lists and no rule names,
// even when a key that serves any model forwards them, are counted as
// "other": they cannot fill the bounded label set before the configured
// models are seen.
func TestMadeUpModelsFoldToOther(t *testing.T) {
	g := startGateway(t, oneKey+"  k2: {provider: openai_compatible, base_url: \"{{MOCK}}/v1\", secret: sk-test-k2, models: [gpt-4o]}\n")
	hdr := map[string]string{"content-type": "application/json"}
	for i := range 105 {
		if resp, b := g.do("POST", "/v1/chat/completions", hdr, `{"model":"made-up-`+strconv.Itoa(i)+`","messages":[]}`); resp.StatusCode != 200 {
			t.Fatalf("made-up-%d: %d %s", i, resp.StatusCode, b)
		}
	}
	if resp, b := g.do("POST", "/v1/chat/completions", hdr, `{"model":"gpt-4o","messages":[]}`); resp.StatusCode != 200 {
		t.Fatalf("gpt-4o: %d %s", resp.StatusCode, b)
	}
	var other, gpt4o int
	// A call is booked when its access-log entry comes (every 100 ms).
	wait.Until(t, 5*time.Second, "106 calls booked", func() bool {
		other, gpt4o = 0, 0
		for _, line := range strings.Split(string(g.getAdmin("/metrics")), "\n") {
			if !strings.HasPrefix(line, "keymux_requests_total{") {
				continue
			}
			n, _ := strconv.Atoi(line[strings.LastIndexByte(line, ' ')+1:])
			switch {
			case strings.Contains(line, `model="other"`):
				other += n
			case strings.Contains(line, `model="gpt-4o"`):
				gpt4o += n
			case strings.Contains(line, "made-up"):
				t.Errorf("a made-up model is a label: %s", line)
			}
		}
		return other+gpt4o >= 106
	})
	if other != 105 || gpt4o != 1 {
		t.Errorf("requests labelled other %d, gpt-4o %d; want 105 and 1", other, gpt4o)
	}
}
