package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"reflect"
	"strings"
	"testing"
)

// The one-pass decoders (splitFile, the member walk under checkFieldNames,
// ruleDoc.decodeMembers) replaced encoding/json passes; the tests below
// hold them to the passes they replaced, kept here as oracles.

var memberSeeds = []string{
	fileV1, fileV2,
	`{}`, `{"settings":null}`, `{"settings":5,"keys":null}`, `{"keys":[]}`, `{"keys":"x","bogus":1}`,
	`{"keys":{"a":1,"b":{"c":[1,"}"]},"a":2}}`, `{"rules":{"r":1},"keys":{"k":1,"k":2},"rules2":1}`,
	`{"keys":{"a":1},"keys":{}}`, `{"Keys":{}}`, `{"k\u0065ys":{"\u00e9":1,"é":2}}`, `{"keys":{"a\"b":1,"a\"b":[]}}`,
	"{\"keys\":{\"\xff\":1,\"\xfe\":2}}", `{"clients":{"c":{}},"rules":{"r":{},"r":{}},"keys":{"k":{},"k":{}}}`,
	`{"keys":5,"rules":[],"clients":{"c":1,"c":1}}`, ` { "keys" : { "a" : 1 , "b" : true } } `,
	"keys:\n  k1: {a: 1}\nrules: 5\n",
	`{"keys":{"b":1,"a":2,"b":3,"a":4}}`, `{"keys":{"":1,"":2,"x":3}}`, `{"rules":{"a":1,"a":2,"a":3,"c":0,"c":1},"keys":{"z":1,"y":2}}`,
}

func FuzzSplitFileMatchesOracle(f *testing.F) {
	for _, s := range memberSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := DecodeFile(data)
		want, werr := decodeFileOracle(data)
		if fmt.Sprint(err) != fmt.Sprint(werr) {
			t.Fatalf("error %v, oracle %v", err, werr)
		}
		if err != nil {
			return
		}
		same := func(a, b json.RawMessage) bool { return bytes.Equal(a, b) && (a == nil) == (b == nil) }
		docs := func(a, b map[string]json.RawMessage) bool {
			return (a == nil) == (b == nil) && maps.EqualFunc(a, b, func(x, y json.RawMessage) bool { return same(x, y) })
		}
		if !same(got.Settings, want.Settings) || !docs(got.Keys, want.Keys) || !docs(got.Rules, want.Rules) || !docs(got.Clients, want.Clients) {
			t.Fatalf("decoded %+v, oracle %+v", got, want)
		}
	})
}

func TestSplitFileMatchesOracle(t *testing.T) {
	for _, s := range memberSeeds {
		got, err := DecodeFile([]byte(s))
		want, werr := decodeFileOracle([]byte(s))
		if fmt.Sprint(err) != fmt.Sprint(werr) {
			t.Errorf("%q: error %v, oracle %v", s, err, werr)
		} else if err == nil && fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%q: decoded %+v, oracle %+v", s, got, want)
		}
	}
}

type fieldsDoc struct {
	A string `json:"a"`
	B *bool  `json:"b"`
}

func FuzzCheckFieldNamesMatchesOracle(f *testing.F) {
	for _, s := range []string{`{"a":1,"b":2}`, `{"a":1,"a":2}`, `{"A":1}`, `{"a":{"c":1,"c":2},"x":1}`, `[1]`, `{"a":1,"x":}`, `{"b":[1,,2],"x":1}`, `{"\u0061":1,"a":1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		name, why := checkFieldNames(raw, &fieldsDoc{})
		wname, wwhy := checkFieldNamesOracle(raw, &fieldsDoc{})
		if name != wname || why != wwhy {
			t.Fatalf("checkFieldNames = %q %q, oracle %q %q", name, why, wname, wwhy)
		}
	})
}

func FuzzRuleDecodeMatchesOracle(f *testing.F) {
	for _, s := range []string{`{"key":"k1","from":"a","to":"b"}`, `{"key":"k1","from":"a","to":"b","enabled":false}`,
		`{"key":null,"from":"a\u00e9\n","to":"b","enabled":null}`, `{"key":1}`, `{"enabled":"true"}`, "{\"from\":\"\xff\"}", `{"key":"k","key":"j"}`, `null`, `[]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var got, want ruleDoc
		err := decodeStrict("rules/r", raw, &got)
		werr := decodeStrictOracle("rules/r", raw, &want)
		if fmt.Sprint(err) != fmt.Sprint(werr) {
			t.Fatalf("error %v, oracle %v", err, werr)
		}
		enabled := func(d ruleDoc) string {
			if d.Enabled == nil {
				return "nil"
			}
			return fmt.Sprint(*d.Enabled)
		}
		if got.Key != want.Key || got.From != want.From || got.To != want.To || enabled(got) != enabled(want) {
			t.Fatalf("decoded %+v, oracle %+v", got, want)
		}
	})
}

// decodeStrictOracle is decodeStrict through encoding/json alone.
func decodeStrictOracle(doc string, raw []byte, v any) error {
	if string(bytes.TrimSpace(raw)) == "null" {
		return docErr(doc, "want a JSON object, got null")
	}
	if name, why := checkFieldNamesOracle(raw, v); name != "" {
		if why == "unknown" {
			return docErr(doc, "unknown field %q", truncate(name, 128))
		}
		return fieldErr(doc, truncate(name, 128), "appears twice")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonErr(doc, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return docErr(doc, "invalid JSON: data after the document")
	}
	return nil
}

func checkFieldNamesOracle(raw []byte, v any) (name, why string) {
	t := reflect.TypeOf(v)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return "", ""
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return "", "" // not an object: the decoder reports it
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return "", ""
		}
		key, ok := tok.(string)
		if !ok {
			return "", ""
		}
		if !hasJSONField(t, key) {
			return key, "unknown"
		}
		if seen[key] {
			return key, "duplicate"
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return "", ""
		}
	}
	return "", ""
}

// fileRaw is File before the sections are split into documents.
type fileRaw struct {
	Settings json.RawMessage `json:"settings"`
	Keys     json.RawMessage `json:"keys"`
	Rules    json.RawMessage `json:"rules"`
	Clients  json.RawMessage `json:"clients"`
}

func decodeFileOracle(data []byte) (*File, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fmt.Errorf("%w: the file is empty", ErrBadFile)
	}
	js := data
	if !json.Valid(data) { // the conversion is not what this oracle checks
		var err error
		if js, err = yamlToJSON(data); err != nil {
			return nil, err
		}
	}
	if t := bytes.TrimSpace(js); len(t) == 0 || t[0] != '{' {
		return nil, fmt.Errorf("%w: want an object with settings, keys, rules, clients", ErrBadFile)
	}
	if name, why := checkFieldNamesOracle(js, &fileRaw{}); why != "" {
		if why == "unknown" {
			return nil, fmt.Errorf("%w: unknown top-level field %q (want settings, keys, rules, clients)", ErrBadFile, truncate(name, 64))
		}
		return nil, fmt.Errorf("%w: top-level field %q appears twice", ErrBadFile, name)
	}
	var d File
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		msg := err.Error()
		if f, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
			return nil, fmt.Errorf("%w: unknown top-level field %s (want settings, keys, rules, clients)", ErrBadFile, f)
		}
		if de, ok := jsonErr("file", err).(*DocError); ok {
			if de.Field != "" {
				return nil, fmt.Errorf("%w: field %q: want an object of documents", ErrBadFile, de.Field)
			}
			return nil, fmt.Errorf("%w: %s", ErrBadFile, de.Reason)
		}
		return nil, fmt.Errorf("%w: %v", ErrBadFile, err)
	}
	var r fileRaw
	if err := json.Unmarshal(js, &r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadFile, err)
	}
	for _, sec := range []struct {
		kind Kind
		raw  json.RawMessage
	}{{KindKeys, r.Keys}, {KindRules, r.Rules}, {KindClients, r.Clients}} {
		id, err := duplicateMemberOracle(sec.raw)
		if err != nil {
			return nil, err
		}
		if id != "" {
			return nil, fmt.Errorf("%w: %s appears twice", ErrBadFile, docName(sec.kind, id))
		}
	}
	return &d, nil
}

func duplicateMemberOracle(raw []byte) (string, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return "", nil
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return "", nil
		}
		key, _ := tok.(string)
		if seen[key] {
			return key, nil
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return "", nil
		}
	}
	return "", nil
}
