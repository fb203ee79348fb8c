// Package export_kafka_wasm_handler_record_handler handles issued-token: has the producer verify
// each issued token and announces verified tokens on the event stream.
//
// Dispositions: malformed JSON or missing fields -> reject; token invalid, expired, or issued to
// another user than the record says -> reject; producer unreachable, timed out, busy with the
// same idempotency key (409), 408, 429 or 5xx -> retry.
package export_kafka_wasm_handler_record_handler

import (
	types "wit_component/kafka_wasm_handler_types"
	"wit_component/sdk"
)

// issuedToken is the token as the producer publishes it.
type issuedToken struct {
	UserID    string `json:"user_id"`
	Token     string `json:"token"`
	IssuedAt  string `json:"issued_at"`
	ExpiresAt string `json:"expires_at"`
}

type verify struct {
	Token string `json:"token"`
}

// verdict is the producer's verdict (other fields are ignored).
type verdict struct {
	Valid  bool    `json:"valid"`
	UserID *string `json:"user_id"`
	Reason *string `json:"reason"`
}

type tokenVerified struct {
	UserID    string `json:"user_id"`
	ExpiresAt string `json:"expires_at"`
}

// Handle is the component's record-handler.handle.
func Handle(record types.KafkaRecord) sdk.Result { return sdk.Handle(record, handle) }

func handle(record types.KafkaRecord) error {
	var issued issuedToken
	if err := sdk.JSONValue(record, &issued); err != nil {
		return err
	}
	if !sdk.IsUUID(issued.UserID) {
		return sdk.Reject("user_id " + sdk.Quote(issued.UserID) + " is not a UUID")
	}
	if issued.Token == "" {
		return sdk.Reject("token is empty")
	}
	for _, field := range []struct{ name, value string }{
		{"issued_at", issued.IssuedAt},
		{"expires_at", issued.ExpiresAt},
	} {
		if !sdk.IsRFC3339UTC(field.value) {
			return sdk.Reject(field.name + " " + sdk.Quote(field.value) + " is not an RFC 3339 UTC timestamp")
		}
	}
	response, err := sdk.CallJSON(sdk.Post, "/producer-svc/tokens/verify", verify{Token: issued.Token})
	if err != nil {
		return sdk.CallFailed("verifying the token", err)
	}
	if response.Status != 200 {
		return sdk.StatusFailed("verifying the token", response)
	}
	var v verdict
	if err := sdk.FromJSON(response.Body, &v, false); err != nil {
		return sdk.Retry("verifying the token: unreadable producer answer: " + err.Error())
	}
	if !v.Valid {
		reason := "no reason given"
		if v.Reason != nil {
			reason = *v.Reason
		}
		return sdk.Reject("token is not valid: " + reason)
	}
	if v.UserID == nil || *v.UserID != issued.UserID {
		return sdk.Reject("token belongs to user " + sdk.QuoteOption(v.UserID) + ", but the record says " +
			sdk.Quote(issued.UserID))
	}
	sdk.PublishJSON("token-verified", tokenVerified{UserID: issued.UserID, ExpiresAt: issued.ExpiresAt})
	return nil
}
