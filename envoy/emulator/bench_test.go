package emulator

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// BenchmarkRoundTrip: one POST through the emulator with the keymux
// processing mode (headers SEND, request body BUFFERED, response headers
// SEND), a processor that continues everything, and a local upstream.
func BenchmarkRoundTrip(b *testing.B) {
	proc := startProc(b, continueAll)
	ev := start(b, proc.addr, options{})
	body := `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}`
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		resp, err := client.Post(ev.em.URL()+"/v1/chat/completions", "application/json", strings.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
}
