package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"hash"
	"io"
	"net/http"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// formKeys: one key on the mock whose rules rename the multipart
// endpoints' models, so the test knows what the upstream must receive.
const formKeys = `
keys:
  k1: {provider: openai_compatible, base_url: "{{MOCK}}/v1", secret: sk-test-k1}
rules:
  k1-stt: {key: k1, from: whisper-1, to: gpt-4o-transcribe}
  k1-img: {key: k1, from: dall-e-2, to: gpt-image-1}
`

// TestJavaScriptClientForms: the official npm openai client's
// audio.transcriptions.create and images.edit succeed through keymux; the
// upstream receives the rule's model in the form and the file part intact
// (its SHA-256 is the one the client computed).
func TestJavaScriptClientForms(t *testing.T) {
	g := startGateway(t, formKeys)
	out := g.runJS("forms.mjs")
	type line struct {
		Op, Text, SHA256 string
		Created          int64
		Images           int
	}
	var lines []line
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var v line
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Fatalf("output line %q: %v", l, err)
		}
		lines = append(lines, v)
	}
	if len(lines) != 2 || lines[0].Text != "Mock transcription of speech.wav (3145728 bytes, model gpt-4o-transcribe)." ||
		lines[1].Created == 0 || lines[1].Images != 1 {
		t.Fatalf("unexpected output:\n%s", out)
	}
	reqs := g.requests()
	if len(reqs) != 2 {
		t.Fatalf("mock saw %d requests, want 2", len(reqs))
	}
	for i, want := range []struct{ path, field, model, file string }{
		{"/v1/audio/transcriptions", "file", "gpt-4o-transcribe", "speech.wav"},
		{"/v1/images/edits", "image", "gpt-image-1", "in.png"},
	} {
		r := reqs[i]
		f := r.Form.File(want.field)
		switch {
		case r.Path != want.path || r.Form == nil:
			t.Errorf("request %d: %s, form %v", i, r.Path, r.Form)
		case r.Form.Fields["model"] != want.model || r.Model != want.model:
			t.Errorf("%s: upstream got model %q, want the rule's %q", want.path, r.Form.Fields["model"], want.model)
		case f == nil || f.SHA256 != lines[i].SHA256 || f.Filename != want.file:
			t.Errorf("%s: file part %+v, want %s hashed %s", want.path, f, want.file, lines[i].SHA256)
		case r.Credential != "sk-test-k1" || strings.Contains(r.AuthValue, "km-js-client"):
			t.Errorf("%s: upstream credential %q", want.path, r.Credential)
		}
	}
	if f := reqs[1].Form.Fields; f["prompt"] != "add a hat" {
		t.Errorf("image edit prompt %q: a field other than model changed", f["prompt"])
	}
}

// Hostile multipart bodies get OpenAI-style 400s from keymux, never reach
// the upstream, and keymux keeps serving.
func TestHostileMultipart(t *testing.T) {
	g := startGateway(t, formKeys)
	const b = "hostile-boundary"
	part := func(h, v string) string { return "--" + b + "\r\n" + h + "\r\n\r\n" + v + "\r\n" }
	model := part(`Content-Disposition: form-data; name="model"`, "whisper-1")
	file := part(`Content-Disposition: form-data; name="file"; filename="a.wav"`, "RIFF")
	end := "--" + b + "--\r\n"
	for _, tc := range []struct {
		name, ct, body, code, msg string
	}{
		{"missing boundary", "multipart/form-data", file + model + end, "invalid_content_type",
			"The multipart/form-data Content-Type has no boundary parameter."},
		{"invalid boundary", "multipart/form-data; boundary=\"" + strings.Repeat("x", 80) + "\"", file + model + end, "invalid_content_type",
			"The multipart boundary must be 1 to 70 of the characters RFC 2046 allows, not ending with a space."},
		{"huge part headers", "multipart/form-data; boundary=" + b, part("X-Pad: "+strings.Repeat("p", 1<<20), "v") + model + end, "invalid_multipart",
			"The multipart/form-data body is malformed: a part's headers are longer than 8192 bytes."},
		{"nested form", "multipart/form-data; boundary=" + b,
			part("Content-Disposition: form-data; name=\"file\"\r\nContent-Type: multipart/form-data; boundary=inner", "--inner\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nevil\r\n--inner--") + model + end,
			"invalid_multipart", "The multipart/form-data body is malformed: nested multipart parts are not accepted."},
		{"smuggled delimiter", "multipart/form-data; boundary=" + b, part(`Content-Disposition: form-data; name="file"; filename="a"`, "x\n--"+b+"\nContent-Disposition: form-data; name=\"model\"\n\nevil") + model + end,
			"invalid_multipart", "The multipart/form-data body is malformed: the boundary appears inside a part instead of on a line of its own."},
		{"no closing delimiter", "multipart/form-data; boundary=" + b, file + model, "invalid_multipart",
			"The multipart/form-data body is malformed: the body ends before the closing delimiter (--boundary--)."},
		{"missing model", "multipart/form-data; boundary=" + b, file + end, "missing_required_parameter", "You must provide a model parameter."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := g.do("POST", "/v1/audio/transcriptions", map[string]string{"content-type": tc.ct}, tc.body)
			var e struct {
				Error struct{ Message, Type, Code string } `json:"error"`
			}
			if err := json.Unmarshal(body, &e); err != nil || resp.StatusCode != 400 {
				t.Fatalf("got %d %s", resp.StatusCode, body)
			}
			if e.Error.Code != tc.code || e.Error.Message != tc.msg || e.Error.Type != "invalid_request_error" {
				t.Fatalf("got %+v, want %s %q", e.Error, tc.code, tc.msg)
			}
		})
	}
	if n := len(g.requests()); n != 0 {
		t.Fatalf("the upstream got %d hostile requests", n)
	}
	// Still serving: a well-formed form goes through with the rule applied.
	resp, body := g.do("POST", "/v1/audio/translations", map[string]string{"content-type": "multipart/form-data; boundary=" + b}, file+model+end)
	if resp.StatusCode != 200 || !strings.Contains(string(body), "model gpt-4o-transcribe") {
		t.Fatalf("after the hostile bodies: %d %s", resp.StatusCode, body)
	}
}

// extprocMessages is keymux_extproc_messages_total{kind=kind}.
func (g *gateway) extprocMessages(kind string) int {
	m := regexp.MustCompile(`(?m)^keymux_extproc_messages_total\{kind="` + kind + `"\} (\d+)$`).FindSubmatch(g.getAdmin("/metrics"))
	if m == nil {
		g.t.Fatalf("/metrics lacks keymux_extproc_messages_total{kind=%q}", kind)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// uploadBody is a multipart POST /v1/files body of a file of size bytes,
// generated as it is read (nothing held), hashing the file part.
type uploadBody struct {
	head, tail string
	size, off  int64 // file bytes, and how many were produced
	stage      int
	hash       hash.Hash
	pattern    [4096]byte
}

func newUploadBody(boundary string, size int64) *uploadBody {
	u := &uploadBody{size: size, hash: sha256.New(),
		head: "--" + boundary + "\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n" +
			"--" + boundary + "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n",
		tail: "\r\n--" + boundary + "--\r\n"}
	for i := range u.pattern {
		u.pattern[i] = byte(i*31 + 7)
	}
	return u
}

// length is the body's length, before it is read.
func (u *uploadBody) length() int64 { return int64(len(u.head)) + u.size + int64(len(u.tail)) }

func (u *uploadBody) Read(p []byte) (int, error) {
	switch u.stage {
	case 0:
		return u.copyOut(p, &u.head), nil
	case 1:
		n := int(min(int64(len(p)), u.size-u.off, int64(len(u.pattern))))
		copy(p, u.pattern[:n])
		u.pattern[0]++ // no two chunks alike
		u.hash.Write(p[:n])
		u.off += int64(n)
		if u.off == u.size {
			u.stage++
		}
		return n, nil
	case 2:
		return u.copyOut(p, &u.tail), nil
	}
	return 0, io.EOF
}

// copyOut reads from *s into p, and moves to the next stage when *s is out.
func (u *uploadBody) copyOut(p []byte, s *string) int {
	n := copy(p, *s)
	*s = (*s)[n:]
	if *s == "" {
		u.stage++
	}
	return n
}

// heapPeak samples the process's heap while a call runs.
type heapPeak struct {
	stop chan struct{}
	done chan uint64
}

func sampleHeap() *heapPeak {
	h := &heapPeak{stop: make(chan struct{}), done: make(chan uint64)}
	go func() {
		var peak uint64
		var ms runtime.MemStats
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapAlloc)
			select {
			case <-h.stop:
				h.done <- peak
				return
			case <-t.C:
			}
		}
	}()
	return h
}

func (h *heapPeak) end() uint64 {
	close(h.stop)
	return <-h.done
}

// TestUploadStreams: a 100 MB POST /v1/files (the SDKs' wire format)
// passes keymux and the emulator without being buffered: no request body
// message reaches keymux (keymux_extproc_messages_total), the upstream
// gets the file intact, and the heap of this process — keymux, the
// emulator, the mock and the client all run in it — grows by less than
// 20 MB at its peak (runtime.MemStats.HeapAlloc sampled every 5 ms, from a
// baseline taken after a GC).
func TestUploadStreams(t *testing.T) {
	g := startGateway(t, formKeys)
	const size = 100 << 20
	bodyMsgs := g.extprocMessages("request_body")
	u := newUploadBody("upload-boundary-0123456789", size)
	req, err := http.NewRequestWithContext(t.Context(), "POST", g.url+"/v1/files", u)
	if err != nil {
		t.Fatal(err)
	}
	total := u.length()
	req.ContentLength = total
	req.Header.Set("content-type", "multipart/form-data; boundary=upload-boundary-0123456789")
	req.Header.Set("authorization", "Bearer km-client")

	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	peak := sampleHeap()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		peak.end()
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	top := peak.end()
	grew := int64(top) - int64(base.HeapAlloc)
	t.Logf("heap: baseline %.1f MiB, peak %.1f MiB, growth %.1f MiB for a %d MiB upload",
		float64(base.HeapAlloc)/(1<<20), float64(top)/(1<<20), float64(grew)/(1<<20), size>>20)
	if resp.StatusCode != 200 {
		t.Fatalf("upload: %d %s", resp.StatusCode, out)
	}
	var file struct {
		Object, Filename, Purpose string
		Bytes                     int64
	}
	if err := json.Unmarshal(out, &file); err != nil || file.Object != "file" || file.Bytes != size || file.Filename != "big.jsonl" || file.Purpose != "batch" {
		t.Fatalf("file object %s (%v)", out, err)
	}
	reqs := g.requests()
	if len(reqs) != 1 {
		t.Fatalf("mock saw %d requests", len(reqs))
	}
	f := reqs[0].Form.File("file")
	if want := hex.EncodeToString(u.hash.Sum(nil)); f == nil || f.SHA256 != want || f.Size != size {
		t.Errorf("upstream file part %+v, want %d bytes hashed %s", f, size, want)
	}
	if reqs[0].ContentLength != total || reqs[0].Credential != "sk-test-k1" {
		t.Errorf("upstream content-length %d (want %d), credential %q", reqs[0].ContentLength, total, reqs[0].Credential)
	}
	if n := g.extprocMessages("request_body") - bodyMsgs; n != 0 {
		t.Errorf("%d request body messages reached keymux for an upload, want 0", n)
	}
	if grew >= 20<<20 {
		t.Errorf("heap grew by %.1f MiB during a %d MiB upload, want < 20 MiB", float64(grew)/(1<<20), size>>20)
	}
}

// An upload larger than the provider takes is refused from its
// Content-Length with a 413 before any byte is read.
func TestUploadTooLarge(t *testing.T) {
	g := startGateway(t, formKeys)
	for _, tc := range []struct {
		path string
		size int64
		msg  string
	}{
		{"/v1/files", 512<<20 + 1, "The request body is larger than 536870912 bytes."},
		{"/v1/uploads/upload_1/parts", 64<<20 + 1, "The request body is larger than 67108864 bytes."},
		{"/v1/audio/transcriptions", 32<<20 + 1, "The request body is larger than 33554432 bytes."},
	} {
		// A body that never comes: keymux must answer from the headers.
		pr, pw := io.Pipe()
		req, err := http.NewRequestWithContext(t.Context(), "POST", g.url+tc.path, pr)
		if err != nil {
			t.Fatal(err)
		}
		req.ContentLength = tc.size
		req.Header.Set("content-type", "multipart/form-data; boundary=b")
		resp, err := http.DefaultClient.Do(req)
		pw.Close()
		if err != nil {
			t.Fatalf("%s: %v", tc.path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var e struct {
			Error struct{ Message, Code string } `json:"error"`
		}
		if json.Unmarshal(body, &e); resp.StatusCode != 413 || e.Error.Code != "request_too_large" || e.Error.Message != tc.msg {
			t.Errorf("%s: %d %s", tc.path, resp.StatusCode, body)
		}
	}
	if n := len(g.requests()); n != 0 {
		t.Errorf("the upstream got %d requests", n)
	}
}

// TestFullSizeAudioForm: a transcription form with a 25 MiB file (OpenAI's
// audio limit) fits the shipped buffer limits: keymux reads the model field
// after the file and the file part reaches the upstream intact. (No rule
// applies, so keymux's reply carries no body: the full-size rewrite is
// extproc's TestParseFormFullSize and FuzzParseForm's seed; the whole
// exchange of two 25 MiB gRPC messages can outlast the 5 s message_timeout on
// a machine loaded tenfold.)
func TestFullSizeAudioForm(t *testing.T) {
	g := startGateway(t, formKeys)
	const b = "full-size-boundary"
	audio := strings.Repeat("RIFF\x00\x01\r\n--full-size!", (25<<20)/20) // 20 bytes a time
	body := "--" + b + "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"long.wav\"\r\nContent-Type: audio/wav\r\n\r\n" + audio +
		"\r\n--" + b + "\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-4o-transcribe\r\n--" + b + "--\r\n"
	resp, out := g.do("POST", "/v1/audio/transcriptions", map[string]string{"content-type": "multipart/form-data; boundary=" + b}, body)
	if resp.StatusCode != 200 || !strings.Contains(string(out), "(26214400 bytes, model gpt-4o-transcribe)") {
		t.Fatalf("got %d %s", resp.StatusCode, out)
	}
	sum := sha256.Sum256([]byte(audio))
	reqs := g.requests()
	if f := reqs[len(reqs)-1].Form.File("file"); f == nil || f.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("upstream file part %+v", f)
	}
}
