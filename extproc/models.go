package extproc

import (
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/keymux/keymux/policy"
)

// answerModels serves GET /v1/models and GET /v1/models/{id} from the pool:
// the models the enabled keys serve (and the rules' source models), in
// OpenAI's list format, or Anthropic's when the client sends
// anthropic-version. A client restricted to some models sees only those.
func (x *exchange) answerModels() *extprocv3.ProcessingResponse {
	x.phase = phaseLocal
	x.call.Local = true
	models := x.snap.Models()
	appendOne := appendModel
	if x.hdr.anthropicVersion != "" {
		appendOne = appendAnthropicModel
	}
	if id := x.route.modelID; id != "" {
		for _, m := range models {
			if m == id && x.clientMay(m) {
				x.call.Status = 200
				return immediateJSON(200, appendOne(nil, m))
			}
		}
		if len(id) > maxModelLen {
			id = policy.Truncate(id, maxModelLen) + "…" // the echo stays short
		}
		return x.refuse(&apiError{Status: 404, Type: typeInvalidRequest, Code: "model_not_found", Param: "model",
			Message: "The model `" + id + "` does not exist or no key serves it."})
	}
	b := make([]byte, 0, 64+len(models)*96)
	if x.hdr.anthropicVersion != "" {
		b = append(b, `{"data":[`...)
	} else {
		b = append(b, `{"object":"list","data":[`...)
	}
	var first, last string
	for _, m := range models {
		if !x.clientMay(m) {
			continue
		}
		if first == "" {
			first = m
		} else {
			b = append(b, ',')
		}
		b = appendOne(b, m)
		last = m
	}
	b = append(b, ']')
	if x.hdr.anthropicVersion != "" {
		// Anthropic's page: everything fits in one.
		b = append(b, `,"has_more":false,"first_id":`...)
		b = appendIDOrNull(b, first)
		b = append(b, `,"last_id":`...)
		b = appendIDOrNull(b, last)
	}
	b = append(b, '}')
	x.call.Status = 200
	return immediateJSON(200, b)
}

// appendAnthropicModel renders one model in Anthropic's shape.
func appendAnthropicModel(b []byte, id string) []byte {
	b = append(b, `{"type":"model","id":`...)
	b = appendJSONString(b, id)
	b = append(b, `,"display_name":`...)
	b = appendJSONString(b, id)
	return append(b, `,"created_at":"1970-01-01T00:00:00Z"}`...)
}

func appendIDOrNull(b []byte, id string) []byte {
	if id == "" {
		return append(b, "null"...)
	}
	return appendJSONString(b, id)
}

func (x *exchange) clientMay(model string) bool {
	return x.client == nil || x.client.AllowsModel(model)
}

func appendModel(b []byte, id string) []byte {
	b = append(b, `{"id":`...)
	b = appendJSONString(b, id)
	return append(b, `,"object":"model","created":0,"owned_by":"keymux"}`...)
}
