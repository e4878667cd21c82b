package httpx

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/campaignd/dispatch/platform/errs"
)

type strictInner struct {
	Location string  `json:"location"`
	IDs      []int64 `json:"customer_ids"`
}

type strictEmbedded struct {
	Extra string `json:"extra"`
}

type strictBody struct {
	strictEmbedded
	Name    string                     `json:"name"`
	Count   int                        `json:"count"`
	Inner   *strictInner               `json:"inner"`
	List    []strictInner              `json:"list"`
	Labels  map[string]string          `json:"labels"`
	Raw     json.RawMessage            `json:"raw"`
	At      *time.Time                 `json:"at"`
	Any     any                        `json:"any"`
	Byname  map[string]json.RawMessage `json:"byname"`
	Ignored string                     `json:"-"`
	Untaged string
}

// TestDecodeJSONKeys is the key rules BindJSON enforces on top of
// encoding/json, which matches keys case-insensitively and lets the last of
// two equal keys win.
func TestDecodeJSONKeys(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, body string
		field      string // "" means success
	}{
		{"ok", `{"name":"a","count":1,"inner":{"location":"x","customer_ids":[1,2]},"list":[{"location":"y"}],"labels":{"a":"b"}}`, ""},
		{"embedded and untagged fields", `{"extra":"e","Untaged":"u"}`, ""},
		{"escaped key is the same key", `{"n\u0061me":"a"}`, ""},
		{"raw and any are not looked into", `{"raw":{"a":1,"a":2},"any":{"b":1,"b":2},"at":"2030-01-02T15:04:05Z"}`, ""},
		{"white space everywhere", " {\n\t\"name\" : \"a\" ,\r\n \"inner\" : { \"location\" : \"x\" } , \"list\" : [ ] } ", ""},
		{"strings that look like JSON", `{"name":"{\"name\":1,\"name\":2}","inner":{"location":"]}\\\""}}`, ""},
		{"duplicate", `{"name":"a","name":"b"}`, "name"},
		{"duplicate by escape", `{"name":"a","n\u0061me":"b"}`, "name"},
		{"duplicate nested", `{"inner":{"location":"a","location":"b"}}`, "inner.location"},
		{"duplicate in a list element", `{"list":[{"location":"a"},{"location":"a","location":"b"}]}`, "list.location"},
		{"duplicate map key", `{"labels":{"a":"1","a":"2"}}`, "labels.a"},
		{"invalid UTF-8 keys the decoder reads as one", "{\"labels\":{\"\xff\":\"1\",\"\xfe\":\"2\"}}", "labels.\uFFFD"},
		{"duplicate raw map key", `{"byname":{"a":1,"a":2}}`, "byname.a"},
		{"upper case", `{"NAME":"a"}`, "NAME"},
		{"mixed case nested", `{"inner":{"Location":"a"}}`, "inner.Location"},
		{"case variant after the field", `{"name":"a","Name":"b"}`, "Name"},
		{"long s, which encoding/json folds to s", `{"li\u017Ft":[]}`, "li\u017Ft"},
		{"unknown", `{"nme":"a"}`, "nme"},
		{"ignored field is unknown", `{"Ignored":"a"}`, "Ignored"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var b strictBody
			err := DecodeJSON([]byte(tt.body), &b)
			if tt.field == "" {
				if err != nil {
					t.Fatalf("DecodeJSON(%s) = %v", tt.body, err)
				}
				return
			}
			var e *errs.Error
			if !errors.As(err, &e) || e.Code != errs.CodeInvalidJSON || e.Details["field"] != tt.field ||
				!strings.Contains(e.Message, tt.field) {
				t.Errorf("DecodeJSON(%s) = %#v, want INVALID_JSON naming %q", tt.body, err, tt.field)
			}
		})
	}
}

// TestDecodeJSONMalformedUnchanged: what is not a key problem is reported
// by the decoder exactly as before, however the key scan ends.
func TestDecodeJSONMalformedUnchanged(t *testing.T) {
	t.Parallel()
	for _, body := range []string{
		``, ` `, `{`, `{"name"`, `{"name":`, `{"name":"a"`, `{"name":"a",}`, `{"name" "a"}`, `{,}`, `[`, `]`, `}`,
		`{"inner":[}`, `{"inner":{"location":"a"]}`, `{"list":{"a":1}}`, `{"name":"\`, `"x"`, `12`, `nul`,
		`{"name":"a"} {}`, strings.Repeat("[", 100_000), `{"inner":` + strings.Repeat(`{"location":`, 50) + `"x"}`,
	} {
		var b strictBody
		err := DecodeJSON([]byte(body), &b)
		var e *errs.Error
		if !errors.As(err, &e) || e.Code != errs.CodeInvalidJSON {
			t.Errorf("DecodeJSON(%.40q) = %v, want INVALID_JSON", body, err)
		}
	}
}

func FuzzDecodeJSON(f *testing.F) {
	for _, s := range []string{`{"name":"a","inner":{"location":"x"}}`, `{"name":"a","name":"b"}`, `{"NAME":1}`,
		`{"list":[{"location":"y"},{}]}`, `{"n\u0061me":"a"}`, `{"raw":[1,{"a":2}],"labels":{"x":"y"}}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		var strict strictBody
		err := DecodeJSON([]byte(body), &strict)
		var e *errs.Error
		if err != nil && (!errors.As(err, &e) || e.Code != errs.CodeInvalidJSON) {
			t.Fatalf("DecodeJSON(%q) = %v, want nil or INVALID_JSON", body, err)
		}
		// Whatever DecodeJSON accepts, encoding/json accepts too, with
		// the same result.
		if err == nil {
			var loose strictBody
			if lerr := json.Unmarshal([]byte(body), &loose); lerr != nil {
				t.Fatalf("DecodeJSON accepted %q, json.Unmarshal did not: %v", body, lerr)
			}
		}
	})
}

// TestDecodeJSONMessages: messages read as English and repeat at most a
// short prefix of the client's text, however long.
func TestDecodeJSONMessages(t *testing.T) {
	t.Parallel()
	huge := strings.Repeat("x", 2<<20)
	tests := []struct {
		name, body, want string
	}{
		{"not an object", `[1]`, "request body must be an object, not array"},
		{"wrong field type", `{"name":5}`, `field "name" must be a string, not number`},
		{"huge unknown key", `{"` + huge + `":1}`, `unknown field "xxxx`},
		{"huge number", `{"count":1` + strings.Repeat("0", 2<<20) + `}`, `field "count" must be an integer, not number 1000`},
		{"huge duplicate key", `{"labels":{"` + huge + `":1,"` + huge + `":2}}`, `is given twice`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var b strictBody
			err := DecodeJSON([]byte(tt.body), &b)
			var e *errs.Error
			if !errors.As(err, &e) {
				t.Fatalf("DecodeJSON = %v, want an *errs.Error", err)
			}
			if !strings.Contains(e.Message, tt.want) || len(e.Message) > 300 {
				t.Errorf("message %.300q (%d bytes), want it to contain %q and be short", e.Message, len(e.Message), tt.want)
			}
			if f, _ := e.Details["field"].(string); len(f) > 300 {
				t.Errorf("details.field is %d bytes", len(f))
			}
		})
	}
}
