package mockupstream_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"

	"github.com/keymux/keymux/examples/mockupstream"
)

// The multipart endpoints answer the official SDK in the provider's
// shapes, and the record holds the form: model, fields, and each file
// part's size and hash.
func TestMultipartEndpoints(t *testing.T) {
	srv := startMock(t, mockupstream.Options{})
	c := sdk(srv, "sk-test-1")
	audio := bytes.Repeat([]byte("RIFF\x00\x01\r\n--"), 5000)
	sum := sha256.Sum256(audio)
	wantHash := hex.EncodeToString(sum[:])
	checkFile := func(op, field string) mockupstream.Recorded {
		t.Helper()
		rec := last(t, srv)
		f := rec.Form.File(field)
		if f == nil || f.Size != int64(len(audio)) || f.SHA256 != wantHash || len(rec.Body) != 0 {
			t.Fatalf("%s: recorded file %+v, body %d bytes; want %d bytes hashed %s and no body kept", op, f, len(rec.Body), len(audio), wantHash)
		}
		return rec
	}

	tr, err := c.Audio.Transcriptions.New(t.Context(), openai.AudioTranscriptionNewParams{
		File: openai.File(bytes.NewReader(audio), "a.wav", "audio/wav"), Model: openai.AudioModelWhisper1})
	if err != nil {
		t.Fatal(err)
	}
	if want := "Mock transcription of a.wav (50000 bytes, model whisper-1)."; tr.Text != want {
		t.Errorf("transcription text %q, want %q", tr.Text, want)
	}
	if rec := checkFile("transcription", "file"); rec.Model != "whisper-1" || rec.Form.Fields["model"] != "whisper-1" {
		t.Errorf("recorded model %q", rec.Model)
	}

	img, err := c.Images.Edit(t.Context(), openai.ImageEditParams{
		Image:  openai.ImageEditParamsImageUnion{OfFile: openai.File(bytes.NewReader(audio), "a.png", "image/png")},
		Prompt: "a hat", Model: openai.ImageModelGPTImage1})
	if err != nil {
		t.Fatal(err)
	}
	if img.Created == 0 || len(img.Data) != 1 || img.Data[0].B64JSON == "" {
		t.Errorf("image edit answer %+v", img)
	}
	if rec := checkFile("image edit", "image"); rec.Model != "gpt-image-1" || rec.Form.Fields["prompt"] != "a hat" {
		t.Errorf("recorded model %q prompt %q", rec.Model, rec.Form.Fields["prompt"])
	}

	f, err := c.Files.New(t.Context(), openai.FileNewParams{File: openai.File(bytes.NewReader(audio), "batch.jsonl", "application/jsonl"), Purpose: openai.FilePurposeBatch})
	if err != nil {
		t.Fatal(err)
	}
	if f.Bytes != int64(len(audio)) || f.Filename != "batch.jsonl" || f.Purpose != openai.FileObjectPurposeBatch || !strings.HasPrefix(f.ID, "file-") {
		t.Errorf("file object %+v", f)
	}
	checkFile("files", "file")
}

// A multipart endpoint given something else than a form is a 400.
func TestMultipartNotAForm(t *testing.T) {
	srv := startMock(t, mockupstream.Options{})
	status, _, body := do(t, "POST", srv.URL()+"/v1/audio/transcriptions",
		map[string]string{"authorization": "Bearer sk-1", "content-type": "application/json"}, `{"model":"whisper-1"}`)
	e := decodeError(t, body)
	if status != 400 || e.Error.Message != "Could not parse multipart form (mock upstream): not a multipart/form-data body" {
		t.Fatalf("got %d %q", status, e.Error.Message)
	}
}
