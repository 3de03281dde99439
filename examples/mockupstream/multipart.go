package mockupstream

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strings"
)

// The multipart endpoints: audio transcriptions and translations, image
// edits and variations, file uploads and upload parts. The mock streams
// each form: file parts go to a SHA-256 and are never held, so a 100 MB
// upload costs the mock a few buffers.

// Form is what the mock read from a multipart/form-data request.
type Form struct {
	// Fields are the plain fields (no filename), each cut to maxFieldBytes.
	Fields map[string]string
	// Files are the file parts, in order.
	Files []FormFile
}

// FormFile is one file part of a Form.
type FormFile struct {
	Field, Filename, ContentType string
	Size                         int64
	SHA256                       string // hex
}

// File returns the first file part of field name (nil when none).
func (f *Form) File(name string) *FormFile {
	if f == nil {
		return nil
	}
	for i := range f.Files {
		if f.Files[i].Field == name {
			return &f.Files[i]
		}
	}
	return nil
}

// Limits of the mock's form reader: plain fields and parts.
const (
	maxFieldBytes = 64 << 10
	maxFormParts  = 1000
)

// formOps are the operations whose body is a multipart form.
var formOps = map[string]bool{"transcription": true, "translation": true, "image_edit": true,
	"image_variation": true, "files": true, "upload_part": true}

// formRoute maps the multipart endpoints' paths to their operation.
func formRoute(path string) string {
	switch {
	case strings.HasSuffix(path, "/audio/transcriptions"):
		return "transcription"
	case strings.HasSuffix(path, "/audio/translations"):
		return "translation"
	case strings.HasSuffix(path, "/images/edits"):
		return "image_edit"
	case strings.HasSuffix(path, "/images/variations"):
		return "image_variation"
	case strings.HasSuffix(path, "/v1/files"):
		return "files"
	case strings.Contains(path, "/uploads/") && strings.HasSuffix(path, "/parts"):
		return "upload_part"
	}
	return ""
}

// errNotForm is a body that is not a multipart/form-data form.
var errNotForm = errors.New("not a multipart/form-data body")

// readForm streams a multipart/form-data body: plain fields are kept (cut
// to maxFieldBytes), file parts hashed.
func readForm(r *http.Request) (*Form, error) {
	mt, params, err := mime.ParseMediaType(r.Header.Get("content-type"))
	if err != nil || mt != "multipart/form-data" || params["boundary"] == "" {
		return nil, errNotForm
	}
	mr := multipart.NewReader(r.Body, params["boundary"])
	f := &Form{Fields: map[string]string{}}
	buf := make([]byte, 32<<10)
	for n := 0; ; n++ {
		p, err := mr.NextRawPart()
		if errors.Is(err, io.EOF) {
			return f, nil
		}
		if err != nil {
			return nil, fmt.Errorf("multipart: %w", err)
		}
		if n >= maxFormParts {
			return nil, errors.New("multipart: too many parts")
		}
		if p.FileName() == "" {
			v, err := io.ReadAll(io.LimitReader(p, maxFieldBytes))
			if err != nil {
				return nil, fmt.Errorf("multipart: %w", err)
			}
			if _, err := io.CopyBuffer(io.Discard, p, buf); err != nil {
				return nil, fmt.Errorf("multipart: %w", err)
			}
			f.Fields[p.FormName()] = string(v)
			continue
		}
		h := sha256.New()
		size, err := io.CopyBuffer(h, p, buf)
		if err != nil {
			return nil, fmt.Errorf("multipart: %w", err)
		}
		f.Files = append(f.Files, FormFile{Field: p.FormName(), Filename: p.FileName(),
			ContentType: p.Header.Get("content-type"), Size: size, SHA256: hex.EncodeToString(h.Sum(nil))})
	}
}

// formAnswer answers a multipart endpoint in its provider's shape.
func (s *Server) formAnswer(w *statusWriter, rq *request) {
	f := rq.form
	created := s.now().Unix()
	need := "file"
	switch rq.rt.op {
	case "image_edit", "image_variation":
		need = "image"
	case "upload_part":
		need = "data"
	}
	file := f.File(need)
	if file == nil && need == "image" {
		file = f.File("image[]")
	}
	if file == nil {
		s.writeError(w, rq.rt.dialect, apiError{status: http.StatusBadRequest, typ: "invalid_request_error",
			message: fmt.Sprintf("Missing required parameter: '%s'.", need)})
		return
	}
	switch rq.rt.op {
	case "transcription", "translation":
		s.writeJSON(w, rq, map[string]any{"text": fmt.Sprintf("Mock %s of %s (%d bytes, model %s).", rq.rt.op, file.Filename, file.Size, rq.model)})
	case "image_edit", "image_variation":
		// A 1x1 transparent PNG.
		s.writeJSON(w, rq, map[string]any{"created": created, "data": []map[string]any{{
			"b64_json": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg==",
		}}})
	case "files":
		s.writeJSON(w, rq, map[string]any{"id": "file-" + file.SHA256[:24], "object": "file", "bytes": file.Size,
			"created_at": created, "filename": file.Filename, "purpose": f.Fields["purpose"], "status": "processed"})
	case "upload_part":
		s.writeJSON(w, rq, map[string]any{"id": "part_" + file.SHA256[:24], "object": "upload.part",
			"created_at": created, "upload_id": uploadID(rq.r.URL.Path)})
	}
}

// uploadID is the {id} of …/uploads/{id}/parts.
func uploadID(path string) string {
	_, rest, _ := strings.Cut(path, "/uploads/")
	id, _, _ := strings.Cut(rest, "/")
	return id
}
