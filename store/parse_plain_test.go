package store

import (
	"fmt"
	"testing"

	"github.com/keymux/keymux/policy"
)

var ruleSeeds = []string{
	`{"key":"k1","from":"a","to":"b"}`, ` { "key" : "*" , "from" : "gpt-4" , "to" : "gpt-4o", "enabled" : false } `,
	`{"key":"k1","from":"a","to":"b","enabled":true}`, `{"key":"k1","from":"é","to":"b"}`, "{\"key\":\"k1\",\"from\":\"\xff\",\"to\":\"b\"}",
	`{"key":"k1","from":"a\u0062","to":"b"}`, `{"key":"k1","from":"a","to":"b"}x`, `{"key":"k1","from":"a","to":"b",}`,
	`{"key":"k1","key":"k2","from":"a","to":"b"}`, `{"Key":"k1","from":"a","to":"b"}`, `{"key":"k1","from":"a","to":"b","enabled":null}`,
	`{"key":"k1","from":"a","to":"a"}`, `{"key":"k1","from":"a","to":"x/../y"}`, `{"key":"k 1","from":"a","to":"b"}`, `{}`, `null`, `[]`,
	`{"key":"k1","from":"a","to":"b","enabled":tru}`, "{\"key\":\"k1\",\"from\":\"a\x7f\",\"to\":\"b\"}", `{"key":"k1","from":"*","to":"b"}`,
}

// A rule of the plain form decodes as encoding/json decodes it, and is
// accepted by the strict decoder.
func FuzzRulePlainMatchesOracle(f *testing.F) {
	for _, s := range ruleSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var got, want ruleDoc
		if !got.decodePlain(raw) {
			return
		}
		if err := decodeStrictOracle("rules/r", raw, &want); err != nil {
			t.Fatalf("plain form, but the strict decoder says %v", err)
		}
		if fmt.Sprint(docFields(got)) != fmt.Sprint(docFields(want)) {
			t.Fatalf("decoded %v, oracle %v", docFields(got), docFields(want))
		}
	})
}

// ParseRule gives what the strict decoder and the checks give, error
// messages included, whether or not the document has the plain form.
func FuzzParseRuleMatchesOracle(f *testing.F) {
	for _, s := range ruleSeeds {
		f.Add("r1", []byte(s))
	}
	f.Add("r 1", []byte(ruleSeeds[0]))
	f.Add("", []byte(ruleSeeds[1]))
	f.Fuzz(func(t *testing.T, id string, raw []byte) {
		got, err := ParseRule(id, raw)
		want, werr := parseRuleOracle(id, raw)
		if fmt.Sprint(err) != fmt.Sprint(werr) {
			t.Fatalf("error %v, oracle %v", err, werr)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("rule %+v, oracle %+v", got, want)
		}
	})
}

func TestRulePlainForm(t *testing.T) {
	for _, tc := range []struct {
		raw   string
		plain bool
	}{
		{`{"key":"k1","from":"a","to":"b"}`, true},
		{` { "key" : "*" , "from" : "gpt-4" , "to" : "gpt-4o", "enabled" : false } `, true},
		{`{"key":"k1","from":"é","to":"b","enabled":true}`, true},
		{`{"key":"k1","from":"a\u0062","to":"b"}`, false}, // an escape
		{`{"key":"k1","from":"a","to":"b","enabled":null}`, false},
		{`{"key":"k1","key":"k2"}`, false},
		{`{"key":"k1"} {}`, false},
		{`{}`, false},
	} {
		var d ruleDoc
		if got := d.decodePlain([]byte(tc.raw)); got != tc.plain {
			t.Errorf("decodePlain(%s) = %v, want %v", tc.raw, got, tc.plain)
		}
	}
	for _, s := range ruleSeeds {
		got, err := ParseRule("r1", []byte(s))
		want, werr := parseRuleOracle("r1", []byte(s))
		if fmt.Sprint(err) != fmt.Sprint(werr) || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("ParseRule(%s) = %+v, %v; oracle %+v, %v", s, got, err, want, werr)
		}
	}
}

func docFields(d ruleDoc) []string {
	enabled := "nil"
	if d.Enabled != nil {
		enabled = fmt.Sprint(*d.Enabled)
	}
	return []string{d.Key, d.From, d.To, enabled}
}

// parseRuleOracle is ParseRule through encoding/json alone.
func parseRuleOracle(id string, raw []byte) (*policy.Rule, error) {
	doc := docName(KindRules, id)
	if err := checkID(doc, id); err != nil {
		return nil, err
	}
	var d ruleDoc
	if err := decodeStrictOracle(doc, raw, &d); err != nil {
		return nil, err
	}
	return checkedRule(id, &d)
}
