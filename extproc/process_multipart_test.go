package extproc

import (
	"strconv"
	"testing"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// formRequest is a buffered multipart request as Envoy sends it.
func formRequest(path string, body []byte, kv ...string) []*extprocv3.ProcessingRequest {
	h := append([]string{":method", "POST", ":path", path, ":authority", "gw.local", ":scheme", "http", "x-request-id", "req-1",
		"content-type", "multipart/form-data; boundary=" + testBoundary, "content-length", strconv.Itoa(len(body))}, kv...)
	return []*extprocv3.ProcessingRequest{reqHeaders(false, h...), reqBody(string(body), true)}
}

// A form's model picks the key, the key's rule rewrites the model field
// alone and content-length follows; without a rule the body is untouched.
func TestForwardForm(t *testing.T) {
	ruleForm := formBody(testBoundary, filePart, "Content-Disposition: form-data; name=\"model\"\n\ngpt-4")
	plainForm := formBody(testBoundary, filePart, "Content-Disposition: form-data; name=\"model\"\n\ngpt-4o-mini")
	for _, tc := range []struct {
		name, path, op, modelIn, modelOut string
		body                              []byte
		patched                           bool
	}{
		{"transcription, rule applied", "/v1/audio/transcriptions", "transcription", "gpt-4", "gpt-4o", ruleForm, true},
		{"translation, no rule", "/v1/audio/translations", "translation", "gpt-4o-mini", "gpt-4o-mini", plainForm, false},
		{"image edit, rule applied", "/v1/images/edits", "image_edit", "gpt-4", "gpt-4o", ruleForm, true},
		{"image variation, no rule", "/v1/images/variations", "image_variation", "gpt-4o-mini", "gpt-4o-mini", plainForm, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testKeys(""))
			res := r.run(then(formRequest(tc.path, tc.body), []*extprocv3.ProcessingRequest{respHeaders(true, ":status", "200")})...)
			if len(res.replies) != 3 {
				t.Fatalf("%d replies", len(res.replies))
			}
			if hr := res.replies[0].GetRequestHeaders(); hr == nil || hr.GetResponse().GetHeaderMutation() != nil || res.replies[0].GetModeOverride() != nil {
				t.Fatalf("headers reply %v, want a plain continue (the form is buffered)", res.replies[0])
			}
			f := forwardOf(t, res.replies[1])
			if f.set[hdrPath] != tc.path || f.set[HeaderUpstream] != "https" || f.set["authorization"] != "Bearer sk-test-oai" || !f.clearRoute {
				t.Errorf("forwarded %v clear_route %v", f.set, f.clearRoute)
			}
			want := tc.body
			if tc.patched {
				want = patchModel(tc.body, mustForm(t, tc.body), tc.modelOut)
				if string(f.body) != string(want) {
					t.Errorf("body %q, want %q", f.body, want)
				}
				if got := stdlibField(t, f.body, testBoundary, "model"); got != tc.modelOut {
					t.Errorf("patched form reads model %q", got)
				}
			} else if f.body != nil {
				t.Errorf("body rewritten without a rule")
			}
			if f.set[hdrContentLength] != strconv.Itoa(len(want)) {
				t.Errorf("content-length %q, want %d", f.set[hdrContentLength], len(want))
			}
			if c := res.call; c.Operation != tc.op || c.ModelOriginal != tc.modelIn || c.ModelFinal != tc.modelOut || c.KeyID != "oai" {
				t.Errorf("call %s %s→%s on %s", c.Operation, c.ModelOriginal, c.ModelFinal, c.KeyID)
			}
		})
	}
}

func mustForm(t *testing.T, body []byte) bodyInfo {
	t.Helper()
	bi, aerr := parseForm(body, testBoundary, modelRequired)
	if aerr != nil {
		t.Fatal(aerr.Message)
	}
	return bi
}

// Malformed forms and oversize bodies get OpenAI-style refusals, at the
// headers when the headers tell.
func TestFormRefusals(t *testing.T) {
	form := formBody(testBoundary, filePart, modelPart)
	hdr := func(ct, cl string) []*extprocv3.ProcessingRequest {
		kv := []string{":method", "POST", ":path", "/v1/audio/transcriptions", "x-request-id", "req-1", "content-length", cl}
		if ct != "" {
			kv = append(kv, "content-type", ct)
		}
		return []*extprocv3.ProcessingRequest{reqHeaders(false, kv...), reqBody(string(form), true)}
	}
	for _, tc := range []struct {
		name   string
		msgs   []*extprocv3.ProcessingRequest
		status int
		code   string
		at     int // the reply that refuses
	}{
		{"no content-type", hdr("", strconv.Itoa(len(form))), 400, "invalid_content_type", 0},
		{"no boundary", hdr("multipart/form-data", strconv.Itoa(len(form))), 400, "invalid_content_type", 0},
		{"JSON on a form endpoint", hdr("application/json", strconv.Itoa(len(form))), 400, "invalid_content_type", 0},
		{"declared over 32 MiB", hdr("multipart/form-data; boundary="+testBoundary, strconv.Itoa(maxFormBytes+1)), 413, "request_too_large", 0},
		{"other boundary in the body", hdr("multipart/form-data; boundary=other", strconv.Itoa(len(form))), 400, "invalid_multipart", 1},
		{"no model", formRequest("/v1/audio/translations", formBody(testBoundary, filePart)), 400, "missing_required_parameter", 1},
		{"empty body", []*extprocv3.ProcessingRequest{reqHeaders(true, ":method", "POST", ":path", "/v1/audio/transcriptions", "content-type", "multipart/form-data; boundary=b")}, 400, "missing_required_parameter", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testKeys(""))
			res := r.run(tc.msgs...)
			if len(res.replies) != tc.at+1 {
				t.Fatalf("%d replies, want the refusal as reply %d", len(res.replies), tc.at+1)
			}
			l := immediate(t, res.replies[tc.at])
			if l.status != tc.status || l.code() != tc.code || l.err.Type != typeInvalidRequest {
				t.Fatalf("got %d %s (%s): %s", l.status, l.code(), l.err.Type, l.err.Message)
			}
		})
	}
}

// An upload is forwarded from its headers: the reply routes it to the
// upload route and turns the request body mode to NONE, so no body message
// follows; the upstream filter's attempt does the same; a declared size
// over the provider's limit is a 413.
func TestUploadFromHeaders(t *testing.T) {
	for _, tc := range []struct {
		name, path string
		size       int
		status     int
	}{
		{"file", "/v1/files", 100 << 20, 0},
		{"upload part", "/v1/uploads/upload_abc/parts", 64 << 20, 0},
		{"file over 512 MiB", "/v1/files", maxFileBytes + 1, 413},
		{"part over 64 MiB", "/v1/uploads/upload_abc/parts", maxUploadPartBytes + 1, 413},
		{"chunked file: the provider's limit applies", "/v1/files", -1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testKeys(""))
			kv := []string{":method", "POST", ":path", tc.path, ":authority", "gw.local", "x-request-id", "req-1",
				"content-type", "multipart/form-data; boundary=b"}
			if tc.size >= 0 {
				kv = append(kv, "content-length", strconv.Itoa(tc.size))
			}
			st := newStream(t, reqHeaders(false, kv...))
			var attempt []*extprocv3.ProcessingResponse
			st.upstream = answerAs(func(string) []*extprocv3.ProcessingRequest {
				f := forwardOf(t, st.out[0])
				attempt = r.runAttempt(
					reqHeaders(false, ":method", "POST", ":path", f.set[hdrPath], "x-request-id", "req-1", HeaderCall, f.call),
					respHeaders(true, ":status", "200"))
				return []*extprocv3.ProcessingRequest{respHeaders(true, ":status", "200")}
			})
			res := r.runStream(st)
			if tc.status != 0 {
				if l := immediate(t, res.replies[0]); l.status != tc.status || l.code() != "request_too_large" {
					t.Fatalf("got %d %s", l.status, l.code())
				}
				return
			}
			if len(res.replies) != 2 {
				t.Fatalf("%d replies, want headers and response headers", len(res.replies))
			}
			f := forwardOf(t, res.replies[0])
			if f.set[HeaderUpstream] != "https-upload" || f.set[hdrPath] != tc.path || !f.clearRoute || f.maxRetries != "0" {
				t.Errorf("forwarded %v clear_route %v max_retries %q", f.set, f.clearRoute, f.maxRetries)
			}
			for _, mo := range []*filterv3.ProcessingMode{res.replies[0].GetModeOverride(), attempt[0].GetModeOverride()} {
				if mo.GetRequestBodyMode() != filterv3.ProcessingMode_NONE || mo == nil || mo.GetResponseBodyMode() != filterv3.ProcessingMode_NONE {
					t.Errorf("mode override %v, want request and response body NONE", mo)
				}
			}
			if res.call.Operation != "files" || res.call.KeyID == "" || res.call.Status != 200 {
				t.Errorf("call %+v", res.call)
			}
		})
	}
}

// A retry of a form on another key re-applies that key's rule to the
// form's model field (the upstream filter reads the form the router
// replays), with content-length to match.
func TestRetryRewritesForm(t *testing.T) {
	form := formBody(testBoundary, filePart, "Content-Disposition: form-data; name=\"model\"\n\ngpt-4")
	{
		// Two keys of one host: a first, then b, whose rule makes gpt-4o.
		r := newRig(t, `
keys:
  a: {provider: openai, secret: sk-test-a, models: [gpt-4, gpt-4o]}
  b: {provider: openai, secret: sk-test-b, models: [gpt-4, gpt-4o]}
rules:
  b-up: {key: b, from: gpt-4, to: gpt-4o}
`)
		st := newStream(t, formRequest("/v1/audio/transcriptions", form)...)
		var firstKey, secondKey string
		st.upstream = answerAs(func(key string) []*extprocv3.ProcessingRequest {
			first := forwardOf(t, st.out[len(st.out)-1])
			firstKey = key
			sent := form
			if first.body != nil {
				sent = first.body
			}
			r.runAttempt(
				reqHeaders(false, ":method", "POST", ":path", "/v1/audio/transcriptions", "x-request-id", "req-1", HeaderCall, first.call),
				reqBody(string(sent), true),
				respHeaders(true, ":status", "429"))
			a2 := r.runAttempt(
				reqHeaders(false, ":method", "POST", ":path", "/v1/audio/transcriptions", "x-request-id", "req-1"),
				reqBody(string(sent), true),
				respHeaders(true, ":status", "200"))
			secondKey = keyOfCredential(forwardOf(t, a2[0]).set["authorization"])
			b := forwardOf(t, a2[1])
			if modelFor(secondKey) == modelFor(firstKey) {
				t.Fatalf("retry on %s after %s: both give %s, nothing to rewrite", secondKey, firstKey, modelFor(secondKey))
			}
			want := patchModel(sent, mustForm(t, sent), modelFor(secondKey))
			if string(b.body) != string(want) || b.set[hdrContentLength] != strconv.Itoa(len(want)) {
				t.Errorf("attempt 2 (%s after %s): body %q content-length %q", secondKey, firstKey, b.body, b.set[hdrContentLength])
			}
			if got := stdlibField(t, b.body, testBoundary, "model"); got != modelFor(secondKey) {
				t.Errorf("attempt 2 form reads model %q, want %q", got, modelFor(secondKey))
			}
			return []*extprocv3.ProcessingRequest{respHeaders(true, ":status", "200")}
		})
		res := r.runStream(st)
		if secondKey == "" || secondKey == firstKey || res.call.KeyID != secondKey {
			t.Fatalf("retry on %q after %q, call booked on %q", secondKey, firstKey, res.call.KeyID)
		}
	}
}
