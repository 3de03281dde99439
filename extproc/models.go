package extproc

import (
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/keymux/keymux/policy"
)

// answerModels serves GET /v1/models and GET /v1/models/{id} from the pool:
// the models the enabled keys serve (and the rules' source models), in
// OpenAI's list format. A client restricted to some models sees only those.
func (x *exchange) answerModels() *extprocv3.ProcessingResponse {
	x.phase = phaseLocal
	x.call.Local = true
	models := x.snap.Models()
	if id := x.route.modelID; id != "" {
		for _, m := range models {
			if m == id && x.clientMay(m) {
				x.call.Status = 200
				return immediateJSON(200, appendModel(nil, m))
			}
		}
		if len(id) > maxModelLen {
			id = policy.Truncate(id, maxModelLen) + "…" // the echo stays short
		}
		return x.refuse(&apiError{Status: 404, Type: typeInvalidRequest, Code: "model_not_found", Param: "model",
			Message: "The model `" + id + "` does not exist or no key serves it."})
	}
	b := make([]byte, 0, 64+len(models)*64)
	b = append(b, `{"object":"list","data":[`...)
	n := 0
	for _, m := range models {
		if !x.clientMay(m) {
			continue
		}
		if n > 0 {
			b = append(b, ',')
		}
		b = appendModel(b, m)
		n++
	}
	b = append(b, "]}"...)
	x.call.Status = 200
	return immediateJSON(200, b)
}

func (x *exchange) clientMay(model string) bool {
	return x.client == nil || x.client.AllowsModel(model)
}

func appendModel(b []byte, id string) []byte {
	b = append(b, `{"id":`...)
	b = appendJSONString(b, id)
	return append(b, `,"object":"model","created":0,"owned_by":"keymux"}`...)
}
