package extproc

import (
	"bytes"
	"mime"
	"strconv"
	"strings"
)

// The multipart/form-data reader. keymux needs two things from a form (the
// audio and image-edit endpoints): the value of its "model" field and
// where that value lies, so that the key's rule can replace it and leave
// every other byte as the client sent it. It never builds parts: it walks
// the delimiters of one buffered body, decodes only part headers and the
// model and stream values, and refuses what two parsers could read
// differently (RFC 7578, RFC 2046 section 5.1.1):
//   - the boundary string anywhere but at the start of a delimiter line
//     (CRLF "--" boundary, then "--", or optional blanks and CRLF);
//   - part headers longer than maxPartHeaderBytes, folded header lines,
//     more than maxFormParts parts;
//   - a part without a form-data Content-Disposition naming it, extended
//     (name*) or repeated parameters;
//   - a nested multipart part, and a model part that is a file or carries
//     a Content-Transfer-Encoding;
//   - model or stream given twice.

const (
	// maxFormParts bounds the parts of one form (mime/multipart's default).
	maxFormParts = 1000
	// maxPartHeaderBytes bounds the header block of one part.
	maxPartHeaderBytes = 8 << 10
	// maxBoundaryLen is RFC 2046's limit.
	maxBoundaryLen = 70
)

// formBoundary returns the boundary of a multipart/form-data Content-Type.
func formBoundary(contentType string) (string, *apiError) {
	if contentType == "" {
		return "", badRequest("invalid_content_type", "", "This endpoint takes a multipart/form-data body: the Content-Type header is missing.")
	}
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil || mt != "multipart/form-data" {
		return "", badRequest("invalid_content_type", "", "This endpoint takes a multipart/form-data body; the Content-Type is "+quoteShort(contentType)+".")
	}
	b, ok := params["boundary"]
	switch {
	case !ok || b == "":
		return "", badRequest("invalid_content_type", "", "The multipart/form-data Content-Type has no boundary parameter.")
	case !validBoundary(b):
		return "", badRequest("invalid_content_type", "", "The multipart boundary must be 1 to 70 of the characters RFC 2046 allows, not ending with a space.")
	}
	return b, nil
}

// validBoundary applies RFC 2046's bchars to a boundary.
func validBoundary(b string) bool {
	if len(b) > maxBoundaryLen || b[len(b)-1] == ' ' {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("'()+_,-./:=? ", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// quoteShort quotes a client value for a message, cut to 100 bytes.
func quoteShort(s string) string {
	if len(s) > 100 {
		s = s[:100] + "…"
	}
	return strconv.Quote(s)
}

func badForm(msg string) *apiError {
	return badRequest("invalid_multipart", "", "The multipart/form-data body is malformed: "+msg)
}

// parseForm reads a multipart/form-data body with the given boundary: the
// model field's value and its offsets (bodyInfo.form is set, so patchModel
// writes a raw value), and stream. need says whether a missing model is an
// error.
func parseForm(body []byte, boundary string, need modelNeed) (bodyInfo, *apiError) {
	bi := bodyInfo{form: true}
	// dash is "--boundary"; each delimiter is CRLF dash, but the first may
	// open the body.
	dash := make([]byte, 0, 2+len(boundary))
	dash = append(append(dash, "--"...), boundary...)
	var (
		models, streams int
		parts           int
		pos             int // where the next search for dash starts
		partStart       = -1
		partName        string
		partIsModel     bool
		closed          bool
	)
	for {
		i := bytes.Index(body[pos:], dash)
		if i < 0 {
			break
		}
		i += pos
		if closed {
			return bi, badForm("the boundary appears after the closing delimiter.")
		}
		if i != 0 && (i < 2 || body[i-2] != '\r' || body[i-1] != '\n') {
			if partStart < 0 {
				return bi, badForm("the boundary appears inside the preamble.")
			}
			return bi, badForm("the boundary appears inside a part instead of on a line of its own.")
		}
		// End of the current part: its content runs up to the CRLF.
		if partStart >= 0 {
			end := i - 2
			if end < partStart {
				return bi, badForm("a part's content overlaps its delimiter.")
			}
			if aerr := bi.takeField(partName, partIsModel, body, partStart, end, &models, &streams); aerr != nil {
				return bi, aerr
			}
		}
		j := i + len(dash)
		if bytes.HasPrefix(body[j:], []byte("--")) {
			closed = true
			pos = j + 2
			continue
		}
		for j < len(body) && (body[j] == ' ' || body[j] == '\t') {
			j++
		}
		if j+1 >= len(body) || body[j] != '\r' || body[j+1] != '\n' {
			if j >= len(body)-1 {
				return bi, badForm("the body ends inside a delimiter line.")
			}
			return bi, badForm("a delimiter line has text after the boundary.")
		}
		j += 2
		parts++
		if parts > maxFormParts {
			return bi, badForm("more than " + strconv.Itoa(maxFormParts) + " parts.")
		}
		name, isModel, hdrEnd, aerr := readPartHeaders(body, j)
		if aerr != nil {
			return bi, aerr
		}
		partStart, partName, partIsModel = hdrEnd, name, isModel
		pos = hdrEnd
	}
	switch {
	case parts == 0:
		return bi, badForm("no part starts with the boundary given in the Content-Type.")
	case !closed:
		return bi, badForm("the body ends before the closing delimiter (--boundary--).")
	case models == 0 && need == modelRequired:
		return bi, badRequest("missing_required_parameter", "model", "You must provide a model parameter.")
	}
	return bi, nil
}

// takeField records a part's value when keymux reads it: model (validated
// as a JSON body's model is) and stream.
func (bi *bodyInfo) takeField(name string, isModel bool, body []byte, start, end int, models, streams *int) *apiError {
	switch name {
	case "model":
		*models++
		if *models > 1 {
			return badRequest("duplicate_field", "model", "The form names 'model' more than once.")
		}
		if !isModel {
			return badRequest("invalid_type", "model", "'model' must be a plain form field, not a file or an encoded part.")
		}
		v := body[start:end]
		if len(v) > maxModelLen {
			v = v[:maxModelLen+1] // checkModel refuses it as too long without a copy of it all
		}
		m := string(v)
		if aerr := checkModel(m); aerr != nil {
			return aerr
		}
		bi.model = m
		bi.modelStart, bi.modelEnd = start, end
	case "stream":
		*streams++
		if *streams > 1 {
			return badRequest("duplicate_field", "stream", "The form names 'stream' more than once.")
		}
		bi.stream = string(body[start:end]) == "true"
	}
	return nil
}

// readPartHeaders reads the header block of a part starting at off: the
// field name, whether the part can be the model (no filename, no transfer
// encoding, not multipart), and the offset of the part's content.
func readPartHeaders(body []byte, off int) (name string, plain bool, contentStart int, aerr *apiError) {
	limit := min(len(body), off+maxPartHeaderBytes)
	block := body[off:limit]
	end := bytes.Index(block, []byte("\r\n\r\n"))
	var lines []byte
	switch {
	case len(block) >= 2 && block[0] == '\r' && block[1] == '\n':
		return "", false, 0, badForm("a part has no Content-Disposition header.")
	case end < 0 && limit == len(body):
		return "", false, 0, badForm("the body ends inside a part's headers.")
	case end < 0:
		return "", false, 0, badForm("a part's headers are longer than " + strconv.Itoa(maxPartHeaderBytes) + " bytes.")
	}
	lines = block[:end]
	contentStart = off + end + 4
	if lines[0] == ' ' || lines[0] == '\t' || bytes.Contains(lines, []byte("\r\n ")) || bytes.Contains(lines, []byte("\r\n\t")) {
		return "", false, 0, badForm("a part has a folded header line.")
	}
	plain = true
	var sawDisp bool
	for len(lines) > 0 {
		line := lines
		if k := bytes.Index(lines, []byte("\r\n")); k >= 0 {
			line, lines = lines[:k], lines[k+2:]
		} else {
			lines = nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !validHeaderLine(line, colon) {
			return "", false, 0, badForm("a part has a malformed header line.")
		}
		key, val := line[:colon], bytes.TrimSpace(line[colon+1:])
		switch {
		case asciiEqualFold(key, "content-disposition"):
			if sawDisp {
				return "", false, 0, badForm("a part has two Content-Disposition headers.")
			}
			sawDisp = true
			n, file, msg := parseDisposition(string(val))
			if msg != "" {
				return "", false, 0, badForm(msg)
			}
			name = n
			plain = plain && !file
		case asciiEqualFold(key, "content-type"):
			if len(val) >= len("multipart/") && asciiEqualFold(val[:len("multipart/")], "multipart/") {
				return "", false, 0, badForm("nested multipart parts are not accepted.")
			}
		case asciiEqualFold(key, "content-transfer-encoding"):
			if !asciiEqualFold(val, "7bit") && !asciiEqualFold(val, "8bit") && !asciiEqualFold(val, "binary") {
				plain = false
			}
		}
	}
	if !sawDisp {
		return "", false, 0, badForm("a part has no Content-Disposition header.")
	}
	return name, plain, contentStart, nil
}

// validHeaderLine: the name before colon is an HTTP token and the value
// holds no control byte but HTAB, as Go's MIME header reader (and most
// servers) demand, so that keymux and the provider never read a part's
// headers differently.
func validHeaderLine(line []byte, colon int) bool {
	for _, c := range line[:colon] {
		if !isTokenByte(c) {
			return false
		}
	}
	for _, c := range line[colon+1:] {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

func isTokenByte(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// parseDisposition reads `form-data; name="…"; filename="…"`: the name,
// whether a filename is given, or a message saying what is wrong.
func parseDisposition(v string) (name string, file bool, msg string) {
	typ, rest, _ := strings.Cut(v, ";")
	if !strings.EqualFold(strings.TrimSpace(typ), "form-data") {
		return "", false, "a part's Content-Disposition is not form-data."
	}
	var seen [2]bool // name, filename
	for rest = strings.TrimLeft(rest, " \t"); rest != ""; rest = strings.TrimLeft(rest, " \t") {
		eq := strings.IndexByte(rest, '=')
		if eq <= 0 {
			return "", false, "a Content-Disposition parameter has no value."
		}
		key := strings.ToLower(strings.TrimSpace(rest[:eq]))
		rest = strings.TrimLeft(rest[eq+1:], " \t")
		var val string
		if strings.HasPrefix(rest, `"`) {
			k := 1
			for k < len(rest) && rest[k] != '"' {
				if rest[k] == '\\' {
					return "", false, "a Content-Disposition parameter has a backslash escape."
				}
				k++
			}
			if k == len(rest) {
				return "", false, "a Content-Disposition parameter has an unterminated quoted value."
			}
			val, rest = rest[1:k], rest[k+1:]
		} else {
			k := strings.IndexByte(rest, ';')
			if k < 0 {
				k = len(rest)
			}
			val, rest = strings.TrimRight(rest[:k], " \t"), rest[k:]
		}
		rest = strings.TrimLeft(rest, " \t")
		if rest != "" {
			if rest[0] != ';' {
				return "", false, "a Content-Disposition parameter is followed by text instead of ';'."
			}
			rest = rest[1:]
		}
		switch key {
		case "name*":
			return "", false, "extended field names (name*=) are not accepted."
		case "filename*":
			file = true
			continue
		}
		i := -1
		switch key {
		case "name":
			i = 0
		case "filename":
			i = 1
		}
		if i < 0 {
			continue
		}
		if seen[i] {
			return "", false, "a Content-Disposition names its " + key + " twice."
		}
		seen[i] = true
		if i == 0 {
			name = val
		} else {
			file = true
		}
	}
	if !seen[0] {
		return "", false, "a part's Content-Disposition has no name."
	}
	return name, file, ""
}
