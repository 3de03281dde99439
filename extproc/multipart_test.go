package extproc

import (
	"bytes"
	"flag"
	"io"
	"mime/multipart"
	"strings"
	"testing"
)

const testBoundary = "----keymux-test-7MA4YWxkTrZu0gW"

// formBody builds a form with CRLF line ends from parts written as
// "headers\n\ncontent" (headers one per line).
func formBody(boundary string, parts ...string) []byte {
	var b bytes.Buffer
	for _, p := range parts {
		h, c, _ := strings.Cut(p, "\n\n")
		b.WriteString("--" + boundary + "\r\n")
		b.WriteString(strings.ReplaceAll(h, "\n", "\r\n") + "\r\n\r\n")
		b.WriteString(c + "\r\n")
	}
	b.WriteString("--" + boundary + "--\r\n")
	return b.Bytes()
}

const (
	filePart  = "Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\nContent-Type: audio/wav\n\nRIFF\x00\x01binary\r\n-- not a boundary"
	modelPart = "Content-Disposition: form-data; name=\"model\"\n\nwhisper-1"
)

func TestParseForm(t *testing.T) {
	for _, tc := range []struct {
		name   string
		body   []byte
		need   modelNeed
		model  string
		stream bool
	}{
		{"file then model", formBody(testBoundary, filePart, modelPart), modelRequired, "whisper-1", false},
		{"model first, stream", formBody(testBoundary, modelPart, "Content-Disposition: form-data; name=stream\n\ntrue", filePart), modelRequired, "whisper-1", true},
		{"preamble and epilogue", append(append([]byte("preamble\r\n"), formBody(testBoundary, modelPart)...), "epilogue"...), modelRequired, "whisper-1", false},
		{"header case and padding", []byte("--" + testBoundary + " \t\r\ncontent-DISPOSITION:form-data;name=\"model\"\r\n\r\ngpt-image-1\r\n--" + testBoundary + "--"), modelRequired, "gpt-image-1", false},
		{"optional model absent", formBody(testBoundary, filePart), modelOptional, "", false},
		{"empty other part", formBody(testBoundary, "Content-Disposition: form-data; name=\"prompt\"\n\n", modelPart), modelRequired, "whisper-1", false},
		{"filename* on the file", formBody(testBoundary, "Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''a%20b.wav\n\nx", modelPart), modelRequired, "whisper-1", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bi, aerr := parseForm(tc.body, testBoundary, tc.need)
			if aerr != nil {
				t.Fatalf("refused: %s", aerr.Message)
			}
			if bi.model != tc.model || bi.stream != tc.stream || !bi.form {
				t.Fatalf("got model %q stream %v form %v, want %q %v true", bi.model, bi.stream, bi.form, tc.model, tc.stream)
			}
			if tc.model == "" {
				return
			}
			if got := string(tc.body[bi.modelStart:bi.modelEnd]); got != tc.model {
				t.Fatalf("model span holds %q", got)
			}
			// The patch changes the value alone and the form stays readable.
			out := patchModel(tc.body, bi, "gpt-4o-mini-transcribe")
			want := string(tc.body[:bi.modelStart]) + "gpt-4o-mini-transcribe" + string(tc.body[bi.modelEnd:])
			if string(out) != want {
				t.Fatalf("patched body differs beyond the model value")
			}
			if got := stdlibField(t, out, testBoundary, "model"); got != "gpt-4o-mini-transcribe" {
				t.Fatalf("mime/multipart reads model %q from the patched body", got)
			}
		})
	}
}

// stdlibField reads one field with Go's mime/multipart ("" when absent).
func stdlibField(t testing.TB, body []byte, boundary, name string) string {
	t.Helper()
	r := multipart.NewReader(bytes.NewReader(body), boundary)
	for {
		p, err := r.NextRawPart()
		if err != nil {
			return ""
		}
		if p.FormName() == name {
			v, _ := io.ReadAll(p)
			return string(v)
		}
	}
}

func TestParseFormRefusals(t *testing.T) {
	big := strings.Repeat("x", maxPartHeaderBytes)
	for _, tc := range []struct {
		name, body, code, msg string
	}{
		{"no part", "just text", "invalid_multipart", "no part starts with the boundary given in the Content-Type."},
		{"no closing delimiter", "--" + testBoundary + "\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n", "invalid_multipart", "the body ends before the closing delimiter (--boundary--)."},
		{"huge part headers", "--" + testBoundary + "\r\nX-Pad: " + big + "\r\n\r\nv\r\n--" + testBoundary + "--", "invalid_multipart", "a part's headers are longer than 8192 bytes."},
		{"headers cut by the end", "--" + testBoundary + "\r\nContent-Disposition: form-data; name=\"model\"", "invalid_multipart", "the body ends inside a part's headers."},
		{"nested multipart", string(formBody(testBoundary, "Content-Disposition: form-data; name=\"file\"\nContent-Type: multipart/mixed; boundary=inner\n\n--inner\r\n\r\nx\r\n--inner--", modelPart)), "invalid_multipart", "nested multipart parts are not accepted."},
		{"boundary inside a part", string(formBody(testBoundary, "Content-Disposition: form-data; name=\"file\"\n\nabc\n--"+testBoundary+"\nContent-Disposition: form-data; name=\"model\"\n\nevil", modelPart)), "invalid_multipart", "the boundary appears inside a part instead of on a line of its own."},
		{"text after the boundary", "--" + testBoundary + "X\r\n\r\n--" + testBoundary + "--", "invalid_multipart", "a delimiter line has text after the boundary."},
		{"boundary after the end", string(formBody(testBoundary, modelPart)) + "\r\n--" + testBoundary + "\r\n", "invalid_multipart", "the boundary appears after the closing delimiter."},
		{"no disposition", string(formBody(testBoundary, "Content-Type: text/plain\n\nx")), "invalid_multipart", "a part has no Content-Disposition header."},
		{"no headers", "--" + testBoundary + "\r\n\r\nx\r\n--" + testBoundary + "--", "invalid_multipart", "a part has no Content-Disposition header."},
		{"not form-data", string(formBody(testBoundary, "Content-Disposition: attachment; name=\"model\"\n\nx")), "invalid_multipart", "a part's Content-Disposition is not form-data."},
		{"folded header", string(formBody(testBoundary, "Content-Disposition: form-data;\n name=\"model\"\n\nx")), "invalid_multipart", "a part has a folded header line."},
		{"name twice", string(formBody(testBoundary, "Content-Disposition: form-data; name=\"file\"; name=\"model\"\n\nx")), "invalid_multipart", "a Content-Disposition names its name twice."},
		{"extended name", string(formBody(testBoundary, "Content-Disposition: form-data; name*=UTF-8''model\n\nx")), "invalid_multipart", "extended field names (name*=) are not accepted."},
		{"escaped name", string(formBody(testBoundary, "Content-Disposition: form-data; name=\"mo\\\"del\"\n\nx")), "invalid_multipart", "a Content-Disposition parameter has a backslash escape."},
		{"unnamed part", string(formBody(testBoundary, "Content-Disposition: form-data\n\nx")), "invalid_multipart", "a part's Content-Disposition has no name."},
		{"model twice", string(formBody(testBoundary, modelPart, modelPart)), "duplicate_field", "The form names 'model' more than once."},
		{"model is a file", string(formBody(testBoundary, "Content-Disposition: form-data; name=\"model\"; filename=\"m.txt\"\n\nwhisper-1")), "invalid_type", "'model' must be a plain form field, not a file or an encoded part."},
		{"model base64", string(formBody(testBoundary, "Content-Disposition: form-data; name=\"model\"\nContent-Transfer-Encoding: base64\n\nd2hpc3Blci0x")), "invalid_type", "'model' must be a plain form field, not a file or an encoded part."},
		{"model missing", string(formBody(testBoundary, filePart)), "missing_required_parameter", "You must provide a model parameter."},
		{"model empty", string(formBody(testBoundary, "Content-Disposition: form-data; name=\"model\"\n\n")), "invalid_value", "'model' must not be empty."},
		{"model control", string(formBody(testBoundary, "Content-Disposition: form-data; name=\"model\"\n\nwhis\x01per")), "invalid_value", "'model' must not contain control characters."},
		{"model dot segment", string(formBody(testBoundary, "Content-Disposition: form-data; name=\"model\"\n\n../x")), "invalid_value", "'model' must not have a '.' or '..' path segment."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, aerr := parseForm([]byte(tc.body), testBoundary, modelRequired)
			if aerr == nil {
				t.Fatal("accepted")
			}
			msg := strings.TrimPrefix(aerr.Message, "The multipart/form-data body is malformed: ")
			if aerr.Status != 400 || aerr.Code != tc.code || msg != tc.msg {
				t.Fatalf("got %d %s %q, want 400 %s %q", aerr.Status, aerr.Code, msg, tc.code, tc.msg)
			}
		})
	}
}

func TestFormBoundary(t *testing.T) {
	for _, tc := range []struct{ ct, want, msg string }{
		{"multipart/form-data; boundary=" + testBoundary, testBoundary, ""},
		{`Multipart/Form-Data; boundary="a b'()+_,-./:=?"`, "a b'()+_,-./:=?", ""},
		{"", "", "This endpoint takes a multipart/form-data body: the Content-Type header is missing."},
		{"application/json", "", `This endpoint takes a multipart/form-data body; the Content-Type is "application/json".`},
		{"multipart/form-data", "", "The multipart/form-data Content-Type has no boundary parameter."},
		{"multipart/form-data; boundary=", "", `This endpoint takes a multipart/form-data body; the Content-Type is "multipart/form-data; boundary=".`},
		{"multipart/form-data; boundary=a; boundary=b", "", `This endpoint takes a multipart/form-data body; the Content-Type is "multipart/form-data; boundary=a; boundary=b".`},
		{"multipart/form-data; boundary=" + strings.Repeat("b", 71), "", "The multipart boundary must be 1 to 70 of the characters RFC 2046 allows, not ending with a space."},
		{`multipart/form-data; boundary="ab "`, "", "The multipart boundary must be 1 to 70 of the characters RFC 2046 allows, not ending with a space."},
		{`multipart/form-data; boundary="a\"b"`, "", "The multipart boundary must be 1 to 70 of the characters RFC 2046 allows, not ending with a space."},
		{"multipart/mixed; boundary=abc", "", `This endpoint takes a multipart/form-data body; the Content-Type is "multipart/mixed; boundary=abc".`},
	} {
		got, aerr := formBoundary(tc.ct)
		switch {
		case tc.msg == "" && (aerr != nil || got != tc.want):
			t.Errorf("%q: got %q, %v; want %q", tc.ct, got, aerr, tc.want)
		case tc.msg != "" && (aerr == nil || aerr.Message != tc.msg || aerr.Status != 400 || aerr.Code != "invalid_content_type"):
			t.Errorf("%q: got %+v, want 400 invalid_content_type %q", tc.ct, aerr, tc.msg)
		}
	}
}

// bigForm is a full-size audio upload: a 25 MiB file part, then the model.
func bigForm() []byte {
	audio := bytes.Repeat([]byte("\x00\x01RIFF\r\n-"), (25<<20)/10)
	return formBody(testBoundary, "Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\nContent-Type: audio/wav\n\n"+string(audio), modelPart)
}

func TestParseFormFullSize(t *testing.T) {
	body := bigForm()
	allocs := testing.AllocsPerRun(3, func() {
		if _, aerr := parseForm(body, testBoundary, modelRequired); aerr != nil {
			t.Fatal(aerr.Message)
		}
	})
	// The delimiter, the model string, the disposition strings: a handful,
	// whatever the size of the file.
	if allocs > 10 {
		t.Fatalf("%v allocations per full-size form, want at most 10", allocs)
	}
}

func BenchmarkParseForm25MiB(b *testing.B) {
	body := bigForm()
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, aerr := parseForm(body, testBoundary, modelRequired); aerr != nil {
			b.Fatal(aerr.Message)
		}
	}
}

// fuzzing reports whether the test binary runs the fuzzing engine (-fuzz).
func fuzzing() bool {
	f := flag.Lookup("test.fuzz")
	return f != nil && f.Value.String() != ""
}

// FuzzParseForm: never a panic; an accepted form has its model where it
// says, Go's mime/multipart reads the same model from it, and the patched
// form reads back with the new model.
func FuzzParseForm(f *testing.F) {
	f.Add(formBody(testBoundary, filePart, modelPart), testBoundary)
	f.Add(formBody("b", "Content-Disposition: form-data; name=model\n\nm"), "b")
	f.Add([]byte("--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n--b--"), "b")
	f.Add([]byte("--b\r\nX: "+strings.Repeat("h", maxPartHeaderBytes+10)+"\r\n\r\n\r\n--b--"), "b")
	f.Add(formBody("b", "Content-Disposition: form-data; name=\"f\"\nContent-Type: multipart/mixed; boundary=c\n\n--c\r\n\r\n--c--", modelPart), "b")
	f.Add([]byte("--b\n\nContent-Disposition: form-data; name=\"model\"\n\nx\n--b--"), "b")
	f.Add([]byte(strings.Repeat("--b\r\n", 2000)), "b")
	f.Add(formBody("b", "Content-Disposition: form-data; name=\"file\"; filename=\"a\"\n\n"+strings.Repeat("\r\n-\x00", 256<<10), modelPart), "b")
	if !fuzzing() {
		// The full-size form runs with the seeds (go test); the fuzzing
		// engine would spend its time copying 26 MB per mutation.
		f.Add(bigForm(), testBoundary)
	}
	f.Fuzz(func(t *testing.T, body []byte, boundary string) {
		if boundary == "" || !validBoundary(boundary) {
			return
		}
		bi, aerr := parseForm(body, boundary, modelOptional)
		if aerr != nil {
			if aerr.Status != 400 || aerr.Message == "" {
				t.Fatalf("refusal %+v", aerr)
			}
			return
		}
		if bi.model == "" {
			return
		}
		if string(body[bi.modelStart:bi.modelEnd]) != bi.model {
			t.Fatalf("span %d:%d does not hold %q", bi.modelStart, bi.modelEnd, bi.model)
		}
		if got := stdlibField(t, body, boundary, "model"); got != bi.model {
			t.Fatalf("keymux reads model %q, mime/multipart %q", bi.model, got)
		}
		out := patchModel(body, bi, "m-2")
		bi2, aerr := parseForm(out, boundary, modelOptional)
		if aerr != nil || bi2.model != "m-2" {
			t.Fatalf("patched form: %v, model %q", aerr, bi2.model)
		}
	})
}
