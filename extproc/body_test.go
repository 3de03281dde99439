package extproc

import (
	"strings"
	"testing"
)

func TestParseBody(t *testing.T) {
	tests := []struct {
		name      string
		body      string
		need      modelNeed
		wantModel string
		stream    bool
		code      string
		param     string
	}{
		{"plain", `{"model":"gpt-4o","messages":[]}`, modelRequired, "gpt-4o", false, "", ""},
		{"stream", `{"stream":true,"model":"m"}`, modelRequired, "m", true, "", ""},
		{"stream null", `{"stream":null,"model":"m"}`, modelRequired, "m", false, "", ""},
		{"escaped", `{"model":"a\"b\u00e9"}`, modelRequired, "a\"bé", false, "", ""},
		{"nested model ignored", `{"x":{"model":"inner"},"model":"outer"}`, modelRequired, "outer", false, "", ""},
		{"optional absent", `{"input":"x"}`, modelOptional, "", false, "", ""},
		{"required absent", `{"input":"x"}`, modelRequired, "", false, "missing_required_parameter", "model"},
		{"empty", ``, modelRequired, "", false, "invalid_json", ""},
		{"invalid", `{`, modelRequired, "", false, "invalid_json", ""},
		{"array", `[1]`, modelRequired, "", false, "invalid_json", ""},
		{"number model", `{"model":1}`, modelRequired, "", false, "invalid_type", "model"},
		{"duplicate", `{"model":"a","model":"b"}`, modelRequired, "", false, "duplicate_field", "model"},
		{"escaped duplicate", `{"model":"a","m\u006fdel":"b"}`, modelRequired, "", false, "duplicate_field", "model"},
		{"stream string", `{"model":"a","stream":"true"}`, modelRequired, "", false, "invalid_type", "stream"},
		{"messages object", `{"model":"a","messages":{}}`, modelRequired, "", false, "invalid_type", "messages"},
		{"empty model", `{"model":""}`, modelRequired, "", false, "invalid_value", "model"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bi, err := parseBody([]byte(tc.body), tc.need)
			if tc.code != "" {
				if err == nil || err.Code != tc.code || err.Param != tc.param || err.Status != 400 {
					t.Fatalf("error = %+v, want 400 %s param %q", err, tc.code, tc.param)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error %+v", err)
			}
			if bi.model != tc.wantModel || bi.stream != tc.stream {
				t.Fatalf("got model %q stream %v, want %q %v", bi.model, bi.stream, tc.wantModel, tc.stream)
			}
		})
	}
}

func TestPatchModelKeepsEveryOtherByte(t *testing.T) {
	tests := []struct{ body, to, want string }{
		{`{"model":"gpt-4","x":1}`, "gpt-4o-mini", `{"model":"gpt-4o-mini","x":1}`},
		{`{ "a" : [ {"model":"keep"} ] ,  "model" :	"gpt-4" }`, "b", `{ "a" : [ {"model":"keep"} ] ,  "model" :	"b" }`},
		{`{"model":"a\u0022b"}`, `q"uote\`, `{"model":"q\"uote\\"}`},
		{`{"model":"x","model_extra":"x"}`, "y", `{"model":"y","model_extra":"x"}`},
	}
	for _, tc := range tests {
		bi, err := parseBody([]byte(tc.body), modelRequired)
		if err != nil {
			t.Fatalf("%s: %+v", tc.body, err)
		}
		if got := string(patchModel([]byte(tc.body), bi, tc.to)); got != tc.want {
			t.Errorf("patch %s → %q:\n got %s\nwant %s", tc.body, tc.to, got, tc.want)
		}
	}
}

func FuzzParseBody(f *testing.F) {
	for _, s := range []string{`{"model":"gpt-4o","stream":true,"messages":[]}`, `{"model":"m","stream_options":null}`, `{"model":"m","stream_options":{"a":[1]}}`, `{"model":1}`, `{`, `[]`, `{"model":"a","model":"b"}`, `{"model":"\u0000"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		bi, err := parseBody(body, modelRequired)
		if err != nil {
			if err.Status != 400 || err.Code == "" {
				t.Fatalf("bad error %+v", err)
			}
			return
		}
		if bi.model == "" {
			t.Fatalf("accepted without a model: %q", body)
		}
		patched := patchModel(body, bi, "patched-model")
		again, err := parseBody(patched, modelRequired)
		if err != nil || again.model != "patched-model" {
			t.Fatalf("patched body %q does not parse back: %+v %+v", patched, again, err)
		}
		if !strings.HasPrefix(string(patched), string(body[:bi.modelStart])) || !strings.HasSuffix(string(patched), string(body[bi.modelEnd:])) {
			t.Fatalf("patch changed bytes outside the model")
		}
		withUsage, err2 := withStreamUsage(patched, again)
		if err2 != nil {
			return // sjson refuses some odd member names; keymux then leaves the body alone
		}
		third, err := parseBody(withUsage, modelRequired)
		if err != nil || !third.streamUsage || third.model != "patched-model" || third.stream != bi.stream {
			t.Fatalf("stream usage patch of %q gave %q: %+v %+v", patched, withUsage, third, err)
		}
	})
}
