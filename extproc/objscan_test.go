package extproc

import (
	"reflect"
	"strings"
	"testing"

	"github.com/keymux/keymux/policy"
)

func TestScanObjectRefs(t *testing.T) {
	tests := []struct {
		name string
		body string
		want []objectRef
	}{
		{"batch", `{"input_file_id":"file-1","endpoint":"/v1/chat/completions"}`,
			[]objectRef{{"input_file_id", "file-1", 17, 25}}},
		{"chain and conversation", `{"model":"m","previous_response_id":"resp_1","conversation":{"id":"conv_1"}}`,
			[]objectRef{{"previous_response_id", "resp_1", 36, 44}, {"conversation", "conv_1", 66, 74}}},
		{"arrays at depth", `{"tool_resources":{"file_search":{"vector_store_ids":["vs_1","vs_2"]}},"x":[1,true,null]}`,
			[]objectRef{{"vector_store_ids", "vs_1", 54, 60}, {"vector_store_ids", "vs_2", 61, 67}}},
		{"escaped member name", `{"input\u005ffile_id":"file-2"}`,
			[]objectRef{{"input_file_id", "file-2", 22, 30}}},
		{"a value named like a member is not one", `{"note":"input_file_id","file_id":"file-3"}`,
			[]objectRef{{"file_id", "file-3", 34, 42}}},
		{"strings in other arrays", `{"input":["file_id","previous_response_id"],"user":"u"}`, nil},
		{"non-string values", `{"file_id":12,"previous_response_id":null,"file_ids":[1,2]}`, nil},
		{"duplicates both seen", `{"previous_response_id":"a","previous_response_id":"b"}`,
			[]objectRef{{"previous_response_id", "a", 24, 27}, {"previous_response_id", "b", 51, 54}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := scanObjectRefs([]byte(tt.body))
			if !ok || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("scanObjectRefs(%s) = %+v %t, want %+v", tt.body, got, ok, tt.want)
			}
			for _, r := range got {
				if s := tt.body[r.start:r.end]; s != `"`+r.id+`"` {
					t.Fatalf("span %d–%d is %s, not the id %q", r.start, r.end, s, r.id)
				}
			}
		})
	}
}

func FuzzScanObjectRefs(f *testing.F) {
	f.Add([]byte(`{"input_file_id":"file-1","file_ids":["a","b"],"conversation":{"id":"c"}}`))
	f.Add([]byte(`{"a\"b":"\\","previous_response_id":"x\u0041"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		if policy.CheckJSON(body, 64) != nil {
			return
		}
		refs, _ := scanObjectRefs(body)
		for _, r := range refs {
			if r.start < 0 || r.end > len(body) || r.start >= r.end || body[r.start] != '"' || body[r.end-1] != '"' {
				t.Fatalf("bad span %+v in %q", r, body)
			}
		}
	})
}

func BenchmarkScanObjectRefs(b *testing.B) {
	body := []byte(`{"model":"gpt-4o","previous_response_id":"resp_1","input":[{"role":"user","content":"` + string(make([]byte, 0)) + `Summarise the attached report in three bullet points, please."}],"store":true}`)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		scanObjectRefs(body)
	}
}

func BenchmarkScanObjectRefsLarge(b *testing.B) {
	prompt := strings.Repeat("A long prompt with \\\"quotes\\\" and text. ", 25000) // ~1 MB
	body := []byte(`{"model":"gpt-4o","messages":[{"role":"user","content":"` + prompt + `"}]}`)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		scanObjectRefs(body)
	}
}

// TestScanObjectRefsAllocations: a body that names no object (a chat
// request: every request is scanned) costs no allocation.
func TestScanObjectRefsAllocations(t *testing.T) {
	body := []byte(`{"model":"gpt-4","messages":[{"role":"system","content":"be terse"},{"role":"user","content":"hi"}],"temperature":0.2,"max_tokens":64,"stream":false}`)
	allocs := testing.AllocsPerRun(100, func() {
		if refs, ok := scanObjectRefs(body); !ok || len(refs) != 0 {
			t.Fatalf("refs %v, ok %v", refs, ok)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations, want none", allocs)
	}
}
