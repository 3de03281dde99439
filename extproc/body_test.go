package extproc

import (
	"reflect"
	"strings"
	"testing"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/testutil/deep"
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
		{"nested to the limit", `{"model":"m","messages":[{"content":[1]}]}`, modelRequired, "m", false, "", ""},
		{"nested past the limit", `{"model":"m","messages":[{"content":[{}]}]}`, modelRequired, "", false, "invalid_json", ""},
		{"model not UTF-8", "{\"model\":\"gpt-4\xff\"}", modelRequired, "", false, "invalid_value", "model"},
		{"user not UTF-8", "{\"model\":\"m\",\"user\":\"\xc3\"}", modelRequired, "", false, "invalid_value", "user"},
		{"prompt_cache_key not UTF-8", "{\"prompt_cache_key\":\"a\xed\xa0\x80\",\"model\":\"m\"}", modelRequired, "", false, "invalid_value", "prompt_cache_key"},
		{"duplicate stream", `{"model":"m","stream":false,"stream":true}`, modelRequired, "", false, "duplicate_field", "stream"},
		{"escaped duplicate stream", `{"stream":true,"model":"m","str\u0065am":false}`, modelRequired, "", false, "duplicate_field", "stream"},
		{"duplicate stream_options", `{"model":"m","stream_options":{"include_usage":true},"stream_options":null}`, modelRequired, "", false, "duplicate_field", "stream_options"},
		{"nested stream twice is fine", `{"model":"m","a":{"stream":1,"stream":2},"stream":true}`, modelRequired, "m", true, "", ""},
		{"model with NUL", `{"model":"gpt-4o\u0000"}`, modelRequired, "", false, "invalid_value", "model"},
		{"model with newline", `{"model":"gpt-4o\nx"}`, modelRequired, "", false, "invalid_value", "model"},
		{"model with tab", `{"model":"\tgpt-4o"}`, modelRequired, "", false, "invalid_value", "model"},
		{"model dot-dot segment", `{"model":"../x"}`, modelRequired, "", false, "invalid_value", "model"},
		{"model dot-dot alone", `{"model":".."}`, modelRequired, "", false, "invalid_value", "model"},
		{"model inner dot segment", `{"model":"org/./m"}`, modelRequired, "", false, "invalid_value", "model"},
		{"model with slash and dots", `{"model":"org/m-1.5..x"}`, modelRequired, "org/m-1.5..x", false, "", ""},
		{"escaped lone surrogate is replaced", `{"model":"a\ud800"}`, modelRequired, "a\ufffd", false, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bi, err := parseBody([]byte(tc.body), tc.need, 4)
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

// TestParseBodyDeepBody: a body of the default max_body_bytes nested
// millions of levels deep is refused naming the limit, without growing the
// goroutine stack (the recursive validation it replaced needed ~512 MiB).
func TestParseBodyDeepBody(t *testing.T) {
	body := deep.Body(policy.DefaultMaxBodyBytes)
	var aerr *apiError
	grew := deep.StackGrowth(func() { _, aerr = parseBody(body, modelRequired, policy.DefaultMaxJSONDepth) })
	const want = "The JSON body of your request nests arrays and objects more than 256 levels deep (the limit, max_json_depth)."
	if aerr == nil || aerr.Status != 400 || aerr.Code != "invalid_json" || aerr.Message != want {
		t.Fatalf("parseBody = %+v, want 400 invalid_json %q", aerr, want)
	}
	if grew > 64<<10 {
		t.Fatalf("the stack grew by %d bytes", grew)
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
		bi, err := parseBody([]byte(tc.body), modelRequired, policy.DefaultMaxJSONDepth)
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
	// Deeply nested bodies: at the limit, past it, and at the full default
	// max_body_bytes (8 MiB, generated here: too large for a corpus file).
	f.Add([]byte(`{"model":"m","x":` + string(deep.Arrays(policy.DefaultMaxJSONDepth-1, "1")) + `}`))
	f.Add(deep.Body(64 << 10))
	f.Add(deep.Body(policy.DefaultMaxBodyBytes))
	f.Add([]byte(`{"mod\u0065l":"m\u00e9","user":"a\"b","max_tokens":1e400,"max_output_tokens":-3,"stream":null,"messages":{}}`))
	f.Add([]byte(` {"user":"u","prompt_cache_key":"p","stream_options":{"include_usage":true},"x":[{"model":1}],"model":"m"} `))
	f.Fuzz(func(t *testing.T, body []byte) {
		bi, err := parseBody(body, modelRequired, policy.DefaultMaxJSONDepth)
		// The one pass reads what parseBody read on gjson, errors included.
		if len(body) <= 64<<10 { // gjson's own pass recurses: no 8 MiB nests
			want, werr := parseBodyGJSON(body, modelRequired, policy.DefaultMaxJSONDepth)
			if !reflect.DeepEqual(err, werr) || err == nil && bi != want {
				t.Fatalf("parseBody(%q) = %+v, %+v; on gjson %+v, %+v", body, bi, err, want, werr)
			}
		}
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
		again, err := parseBody(patched, modelRequired, policy.DefaultMaxJSONDepth)
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
		third, err := parseBody(withUsage, modelRequired, policy.DefaultMaxJSONDepth)
		if err != nil || !third.streamUsage || third.model != "patched-model" || third.stream != bi.stream {
			t.Fatalf("stream usage patch of %q gave %q: %+v %+v", patched, withUsage, third, err)
		}
	})
}
