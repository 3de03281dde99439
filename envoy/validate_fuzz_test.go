package envoy_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/keymux/keymux/envoy"
)

// FuzzValidate: `keymux validate --envoy` reads files users wrote; whatever
// the bytes, Validate must not panic, must locate every problem with a
// *FieldError, and must report the same thing twice (no map-order noise).
func FuzzValidate(f *testing.F) {
	seeds, err := filepath.Glob("*.yaml")
	if err != nil {
		f.Fatal(err)
	}
	fixtures, err := filepath.Glob("testdata/*.yaml")
	if err != nil {
		f.Fatal(err)
	}
	for _, p := range append(seeds, fixtures...) {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(`{"http_filters": [{"name": "x", "typed_config": {"@type": "type.googleapis.com/google.protobuf.Duration", "value": "1s"}}]}`))
	f.Add([]byte("clusters: [{name: a, typed_extension_protocol_options: {k: {}}}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		err := envoy.Validate(data)
		if err == nil {
			return
		}
		var fe *envoy.FieldError
		if !errors.As(err, &fe) {
			t.Fatalf("error without a *FieldError: %v", err)
		}
		if again := envoy.Validate(data); again == nil || again.Error() != err.Error() {
			t.Fatalf("not deterministic:\n%v\nthen\n%v", err, again)
		}
	})
}
