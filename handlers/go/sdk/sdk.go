// Package sdk holds the helpers for writing kafka-wasm:handler components in Go: the same as the
// Rust SDK (handlers/sdk), with the same dispositions, request bytes and reasons.
//
// A handler is a directory with a handler.go in the package the bindings' exports call,
// export_kafka_wasm_handler_record_handler, which defines Handle:
//
//	package export_kafka_wasm_handler_record_handler
//
//	import (
//		types "wit_component/kafka_wasm_handler_types"
//		"wit_component/sdk"
//	)
//
//	func Handle(record types.KafkaRecord) sdk.Result { return sdk.Handle(record, handle) }
//
//	func handle(record types.KafkaRecord) error {
//		var order struct {
//			ID string `json:"id"`
//		}
//		if err := sdk.JSONValue(record, &order); err != nil {
//			return err // a tombstone or malformed JSON: a reject
//		}
//		sdk.PublishJSON("order-seen", order)
//		return nil // ok
//	}
//
// handle returns nil (ok), Retry(reason) (the host delivers the record again later) or
// Reject(reason) (the host dead-letters it). Any other error is a retry with its text. A panic
// traps: the host counts it as a transient failure and replaces the instance.
//
// Go's garbage collector runs only while handle runs, and not during a producer call made with
// Call or CallJSON: never while the host writes into the guest's memory (a record's fields, a
// producer's answer) through cabi_realloc, an allocation that may start or finish a collection.
// The collector calls the host then (clocks, poll_oneoff), which the component model forbids
// during cabi_realloc: the call would trap, once in about a thousand small records and far more
// often with large ones (wasmtime issue 14318; the WASI adapter of wasmtime 48 pauses only the
// monotonic clock). So a handler calls the producer through this package, not through the
// bindings' Call.
//
// The build (gocomp build, run by cargo xtask build-handlers) puts the handler's files next to
// the bindings wit-bindgen-go generates for the world, in the module wit_component, and this
// package as wit_component/sdk.
package sdk

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"unicode"
	"unicode/utf8"

	witTypes "go.bytecodealliance.org/pkg/wit/types"

	api "wit_component/kafka_wasm_handler_producer_api"
	rt "wit_component/kafka_wasm_handler_runtime"
	types "wit_component/kafka_wasm_handler_types"
)

// Result is what record-handler.handle returns: see Handle.
type Result = witTypes.Result[witTypes.Unit, types.HandlerError]

// collecting tells whether the garbage collector may run (see the package's documentation): only
// while a handler's code runs, outside producer calls.
var collecting = true

func init() { collect(false) }

// heap is the collector's goal and the heap's objects, read when it starts again.
var heap = []metrics.Sample{{Name: "/gc/heap/goal:bytes"}, {Name: "/memory/classes/heap/objects:bytes"}}

// collect lets the garbage collector run (GOGC=100) or stops it; stopping it finishes a
// collection under way first, so none is left for an allocation in cabi_realloc to take on.
func collect(on bool) {
	if on == collecting {
		return
	}
	collecting = on
	if !on {
		debug.SetGCPercent(-1)
		return
	}
	debug.SetGCPercent(100)
	// What the host allocated meanwhile (a record, a producer's answer) started no collection,
	// and a handler that allocates little might not start one for many records: start it now
	// when it is due.
	metrics.Read(heap)
	if heap[1].Value.Uint64() >= heap[0].Value.Uint64() {
		runtime.GC()
	}
}

// Handle runs handle on the record, with the garbage collector on, and turns what it returned
// into the contract's result: nil is ok, a Failure its disposition (Retry, Reject), any other
// error a retry with the error's text.
func Handle(record types.KafkaRecord, handle func(types.KafkaRecord) error) Result {
	collect(true)
	defer collect(false)
	return outcome(handle(record))
}

// Failure is a handler's failure: a retry (transient) or a reject (permanent).
type Failure struct {
	Retry  bool
	Reason string
}

func (f *Failure) Error() string { return f.Reason }

// Retry is a transient failure: the host will deliver the record again later.
func Retry(reason string) error { return &Failure{Retry: true, Reason: reason} }

// Reject is a permanent failure: the host dead-letters the record.
func Reject(reason string) error { return &Failure{Retry: false, Reason: reason} }

func outcome(err error) Result {
	var f *Failure
	switch {
	case err == nil:
		return witTypes.Ok[witTypes.Unit, types.HandlerError](witTypes.Unit{})
	case !errors.As(err, &f):
		return witTypes.Err[witTypes.Unit](types.MakeHandlerErrorRetry(err.Error()))
	case f.Retry:
		return witTypes.Err[witTypes.Unit](types.MakeHandlerErrorRetry(f.Reason))
	default:
		return witTypes.Err[witTypes.Unit](types.MakeHandlerErrorReject(f.Reason))
	}
}

// Marshal is v as compact JSON, byte for byte as serde_json writes it: no HTML escaping, U+2028
// and U+2029 as themselves, no trailing newline. Structs keep their fields' order, maps sort
// their keys.
func Marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	out := bytes.TrimSuffix(b.Bytes(), []byte("\n"))
	if !bytes.Contains(out, []byte(`\u202`)) {
		return out, nil
	}
	// encoding/json always escapes U+2028 and U+2029; serde_json writes them as they are. Every
	// backslash in the output starts an escape, so escapes are read two bytes at a time.
	unescaped := make([]byte, 0, len(out))
	for i := 0; i < len(out); i++ {
		if out[i] != '\\' {
			unescaped = append(unescaped, out[i])
			continue
		}
		switch string(out[i:min(i+6, len(out))]) {
		case `\u2028`:
			unescaped, i = utf8.AppendRune(unescaped, '\u2028'), i+5
			continue
		case `\u2029`:
			unescaped, i = utf8.AppendRune(unescaped, '\u2029'), i+5
			continue
		}
		unescaped = append(unescaped, out[i:i+2]...)
		i++
	}
	return unescaped, nil
}

// Quote is s quoted as Rust's {:?} quotes it (so reasons read as the Rust handlers' do):
// \0 \t \r \n \" \\ escaped, and \u{hex} for characters that do not print or that extend the
// grapheme before them.
func Quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case 0:
			b.WriteString(`\0`)
		case '\t':
			b.WriteString(`\t`)
		case '\r':
			b.WriteString(`\r`)
		case '\n':
			b.WriteString(`\n`)
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		default:
			extends := unicode.In(r, unicode.Mn, unicode.Me, unicode.Other_Grapheme_Extend)
			if extends || !unicode.IsPrint(r) {
				fmt.Fprintf(&b, `\u{%x}`, r)
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}

// QuoteOption is an optional string as Rust's {:?} writes an Option<String>: Some("…") or
// None.
func QuoteOption(s *string) string {
	if s == nil {
		return "None"
	}
	return "Some(" + Quote(*s) + ")"
}

// JSONValue parses the record's value as JSON into the struct *v, strictly (see FromJSON); a
// tombstone or a malformed value is a reject whose reason says what is wrong.
func JSONValue(record types.KafkaRecord, v any) error {
	if record.Value.IsNone() {
		return Reject("the record has no value (tombstone)")
	}
	if err := FromJSON(record.Value.Some(), v, true); err != nil {
		return Reject("malformed value: " + err.Error())
	}
	return nil
}

// FromJSON parses data as JSON into the struct *v as serde_json does into a Rust struct with
// #[derive(Deserialize)] (and #[serde(deny_unknown_fields)] when strict): field names match the
// fields' `json` tags exactly; a missing or null field is an error unless the Go field is a
// pointer; a repeated field is an error, and so is an unknown one when strict (else it is
// skipped); an array of exactly one value per field, in order, is read as the struct too.
// Every string read (names, values) must be valid UTF-8 without a lone surrogate escape.
func FromJSON(data []byte, v any, strict bool) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.Elem().Kind() != reflect.Struct {
		panic("sdk.FromJSON needs a pointer to a struct")
	}
	st := rv.Elem().Type()
	var fields []string // the json names, in order
	index := map[string]int{}
	for i := range st.NumField() {
		name, _, _ := strings.Cut(st.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			index[name] = i
			fields = append(fields, name)
		}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	// set reads the next value into the field named name.
	set := func(name string) error {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return err
		}
		if err := checkStrings(raw); err != nil {
			return err
		}
		field := rv.Elem().Field(index[name])
		if string(raw) == "null" && field.Kind() != reflect.Pointer {
			return fmt.Errorf("invalid type: null, expected %s in field `%s`", field.Type(), name)
		}
		if err := json.Unmarshal(raw, field.Addr().Interface()); err != nil {
			var te *json.UnmarshalTypeError
			if errors.As(err, &te) {
				return fmt.Errorf("invalid type: %s, expected %s in field `%s`", te.Value, te.Type, name)
			}
			return err
		}
		return nil
	}
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	switch tok {
	case json.Delim('{'):
		seen := map[string]bool{}
		for dec.More() {
			from := dec.InputOffset()
			tok, err := dec.Token()
			if err != nil {
				return err
			}
			if err := checkStrings(data[from:dec.InputOffset()]); err != nil {
				return err
			}
			key := tok.(string)
			if _, known := index[key]; !known {
				if strict {
					return fmt.Errorf("unknown field `%s`, expected %s", key, oneOf(fields))
				}
				var skipped json.RawMessage
				if err := dec.Decode(&skipped); err != nil {
					return err
				}
				continue
			}
			if seen[key] {
				return fmt.Errorf("duplicate field `%s`", key)
			}
			seen[key] = true
			if err := set(key); err != nil {
				return err
			}
		}
		for _, name := range fields {
			if !seen[name] && rv.Elem().Field(index[name]).Kind() != reflect.Pointer {
				return fmt.Errorf("missing field `%s`", name)
			}
		}
	case json.Delim('['):
		for i, name := range fields {
			if !dec.More() {
				return fmt.Errorf("invalid length %d, expected struct %s with %d elements", i, st.Name(), len(fields))
			}
			if err := set(name); err != nil {
				return err
			}
		}
		if dec.More() {
			return errors.New("trailing characters")
		}
	default:
		return fmt.Errorf("invalid type: %s, expected struct %s", kind(tok), st.Name())
	}
	if _, err := dec.Token(); err != nil { // the closing brace or bracket
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing characters")
	}
	return nil
}

func oneOf(fields []string) string {
	if len(fields) == 0 {
		return "no fields"
	}
	quoted := make([]string, len(fields))
	for i, f := range fields {
		quoted[i] = "`" + f + "`"
	}
	return "one of " + strings.Join(quoted, ", ")
}

func kind(tok json.Token) string {
	switch tok.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case json.Number:
		return "number"
	case string:
		return "string"
	}
	return "value"
}

// checkStrings fails, as serde_json does, for a JSON string in raw (valid JSON text, or its
// start) that is not valid UTF-8 or holds a \u escape of a surrogate that is not a pair's:
// encoding/json would read either as U+FFFD.
func checkStrings(raw []byte) error {
	for i := 0; i < len(raw); i++ {
		if raw[i] != '"' {
			continue
		}
		start := i + 1
		for i = start; i < len(raw) && raw[i] != '"'; i++ {
			if raw[i] != '\\' {
				continue
			}
			i++
			if i >= len(raw) || raw[i] != 'u' || i+4 >= len(raw) {
				continue
			}
			first := hex4(raw[i+1 : i+5])
			i += 4
			switch {
			case first >= 0xDC00 && first <= 0xDFFF:
				return errors.New("lone leading surrogate in hex escape")
			case first >= 0xD800 && first <= 0xDBFF:
				if i+2 >= len(raw) || raw[i+1] != '\\' || raw[i+2] != 'u' {
					return errors.New("unexpected end of hex escape")
				}
				if i+6 >= len(raw) {
					return errors.New("lone leading surrogate in hex escape")
				}
				if second := hex4(raw[i+3 : i+7]); second < 0xDC00 || second > 0xDFFF {
					return errors.New("lone leading surrogate in hex escape")
				}
				i += 6
			}
		}
		if !utf8.Valid(raw[start:min(i, len(raw))]) {
			return errors.New("invalid unicode code point")
		}
	}
	return nil
}

// hex4 is four hex digits' value (-1 when they are not).
func hex4(b []byte) int {
	n := 0
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			n = n*16 + int(c-'0')
		case c >= 'a' && c <= 'f':
			n = n*16 + int(c-'a'+10)
		case c >= 'A' && c <= 'F':
			n = n*16 + int(c-'A'+10)
		default:
			return -1
		}
	}
	return n
}

// Method names the HTTP method of a producer call.
type Method = api.Method

// The methods.
const (
	Get    = api.Method_Get
	Post   = api.Method_Post
	Put    = api.Method_Put
	Patch  = api.Method_Patch
	Delete = api.Method_Delete
)

// Request and Response are a producer call's; Call sends one (any body and headers).
type (
	Request  = api.Request
	Response = api.Response
)

// CallError is why a producer call produced no response: the contract's call-error.
type CallError struct{ api.CallError }

func (e *CallError) Error() string {
	switch e.Tag() {
	case api.CallError_Unreachable:
		return "producer unreachable: " + e.Unreachable()
	case api.CallError_Timeout:
		return "producer timed out"
	case api.CallError_Denied:
		return "call denied by the host: " + e.Denied()
	default:
		return fmt.Sprintf("producer answer over %d bytes", e.TooLarge())
	}
}

// Call sends request to the producer service, the garbage collector stopped while the host
// writes the answer into the guest's memory. The error, when no response came, is a *CallError.
func Call(request Request) (Response, error) {
	was := collecting
	collect(false)
	result := api.Call(request)
	collect(was)
	if result.IsErr() {
		return Response{}, &CallError{result.Err()}
	}
	return result.Ok(), nil
}

// CallJSON sends body as JSON (see Marshal) to the producer service at path with method. The
// error, when no response came, is a *CallError.
func CallJSON(method Method, path string, body any) (Response, error) {
	encoded, err := Marshal(body)
	if err != nil {
		return Response{}, &CallError{api.MakeCallErrorDenied("cannot encode the body: " + err.Error())}
	}
	return Call(Request{
		Method:  method,
		Path:    path,
		Headers: []witTypes.Tuple2[string, string]{{F0: "content-type", F1: "application/json"}},
		Body:    encoded,
	})
}

// CallFailed is the disposition a failed producer call implies: a retry when the producer may
// recover (unreachable, timed out), a reject when a retry cannot help (the host denied the call,
// the answer is too large). An error that is not a *CallError is a retry.
func CallFailed(what string, err error) error {
	var e *CallError
	if !errors.As(err, &e) {
		return Retry(what + ": " + err.Error())
	}
	switch e.Tag() {
	case api.CallError_Unreachable, api.CallError_Timeout:
		return Retry(what + ": " + e.Error())
	default:
		return Reject(what + ": " + e.Error())
	}
}

// StatusFailed is the disposition an unexpected HTTP status implies: a retry for 5xx, 408, 429
// and 409 (the producer may recover; its 409 means an earlier attempt with the same
// Idempotency-Key is still in progress), a reject for any other status (the request itself is
// wrong). The reason holds the body's first 200 characters.
func StatusFailed(what string, r Response) error {
	body := []rune(Lossy(r.Body))
	if len(body) > 200 {
		body = body[:200]
	}
	reason := fmt.Sprintf("%s: producer answered %d: %s", what, r.Status, string(body))
	if r.Status >= 500 || r.Status == 408 || r.Status == 409 || r.Status == 429 {
		return Retry(reason)
	}
	return Reject(reason)
}

// Lossy is b as text, each maximal invalid UTF-8 sequence replaced by U+FFFD, as Rust's
// String::from_utf8_lossy does.
func Lossy(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	var out strings.Builder
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		if r != utf8.RuneError || n > 1 {
			out.Write(b[:n])
			b = b[n:]
			continue
		}
		out.WriteRune(utf8.RuneError)
		b = b[invalidPrefix(b):]
	}
	return out.String()
}

// invalidPrefix is the length of the longest prefix of b (which starts with an invalid sequence)
// that is the start of some valid sequence, at least 1.
func invalidPrefix(b []byte) int {
	lo, hi, need := byte(0x80), byte(0xBF), 0
	switch c := b[0]; {
	case c >= 0xC2 && c <= 0xDF:
		need = 1
	case c == 0xE0:
		lo, need = 0xA0, 2
	case c >= 0xE1 && c <= 0xEC, c == 0xEE, c == 0xEF:
		need = 2
	case c == 0xED:
		hi, need = 0x9F, 2
	case c == 0xF0:
		lo, need = 0x90, 3
	case c >= 0xF1 && c <= 0xF3:
		need = 3
	case c == 0xF4:
		hi, need = 0x8F, 3
	default:
		return 1
	}
	n := 1
	for ; n <= need && n < len(b); n++ {
		if b[n] < lo || b[n] > hi {
			break
		}
		lo, hi = 0x80, 0xBF
	}
	return n
}

// Level is the severity of a log line.
type Level = rt.Level

// The levels.
const (
	Trace = rt.Level_Trace
	Debug = rt.Level_Debug
	Info  = rt.Level_Info
	Warn  = rt.Level_Warn
	Error = rt.Level_Error
)

// Log writes one line to the host's log.
func Log(level Level, message string) { rt.Log(level, message) }

// PublishEvent publishes an event: its kind and its payload (JSON by convention).
func PublishEvent(kind, payload string) { rt.PublishEvent(kind, payload) }

// PublishJSON publishes an event whose payload is payload as JSON (see Marshal).
func PublishJSON(kind string, payload any) {
	text, err := Marshal(payload)
	if err != nil {
		rt.Log(rt.Level_Error, fmt.Sprintf("cannot encode the %s event: %v", kind, err))
		return
	}
	rt.PublishEvent(kind, string(text))
}

// IsRFC3339UTC tells whether s looks like an RFC 3339 UTC timestamp (2026-11-26T13:52:00Z,
// fractional seconds allowed). A syntactic check: the producer is the authority on the instant.
func IsRFC3339UTC(s string) bool {
	digits := func(from, to int) bool {
		for i := from; i < to; i++ {
			if s[i] < '0' || s[i] > '9' {
				return false
			}
		}
		return true
	}
	if len(s) < 20 || !digits(0, 4) || s[4] != '-' || !digits(5, 7) || s[7] != '-' || !digits(8, 10) ||
		(s[10] != 'T' && s[10] != 't') || !digits(11, 13) || s[13] != ':' || !digits(14, 16) ||
		s[16] != ':' || !digits(17, 19) {
		return false
	}
	rest := s[19:]
	if strings.HasPrefix(rest, ".") {
		rest = strings.TrimLeft(rest[1:], "0123456789")
	}
	return rest == "Z" || rest == "z" || rest == "+00:00"
}

// IsUUID tells whether s is a UUID in its hyphenated text form.
func IsUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
				return false
			}
		}
	}
	return true
}
