// Package export_kafka_wasm_handler_record_handler handles new-user-created: checks the user the
// producer published, asks the producer to issue the user's first token, and announces the user
// on the event stream.
//
// Dispositions: malformed JSON, missing or invalid fields -> reject; producer unreachable, timed
// out, busy with the same idempotency key (409), 408, 429 or 5xx -> retry; any other non-201
// answer -> reject.
package export_kafka_wasm_handler_record_handler

import (
	"strings"

	types "wit_component/kafka_wasm_handler_types"
	"wit_component/sdk"
)

// user is the user as the producer publishes it (and as the user-created event announces it).
type user struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	Email     string `json:"email"`
	CreatedAt string `json:"created_at"`
}

type issueToken struct {
	UserID string `json:"user_id"`
}

// Handle is the component's record-handler.handle.
func Handle(record types.KafkaRecord) sdk.Result { return sdk.Handle(record, handle) }

func handle(record types.KafkaRecord) error {
	var u user
	if err := sdk.JSONValue(record, &u); err != nil {
		return err
	}
	if !sdk.IsUUID(u.ID) {
		return sdk.Reject("id " + sdk.Quote(u.ID) + " is not a UUID")
	}
	if strings.TrimSpace(u.Name) == "" {
		return sdk.Reject("name is empty")
	}
	if !strings.Contains(u.Email, "@") {
		return sdk.Reject("email " + sdk.Quote(u.Email) + " is not an address")
	}
	if !sdk.IsRFC3339UTC(u.CreatedAt) {
		return sdk.Reject("created_at " + sdk.Quote(u.CreatedAt) + " is not an RFC 3339 UTC timestamp")
	}
	response, err := sdk.CallJSON(sdk.Post, "/producer-svc/tokens", issueToken{UserID: u.ID})
	if err != nil {
		return sdk.CallFailed("issuing the first token", err)
	}
	if response.Status != 201 {
		return sdk.StatusFailed("issuing the first token", response)
	}
	sdk.PublishJSON("user-created", u)
	return nil
}
