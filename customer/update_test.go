package customer

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/campaignd/dispatch/platform/channel"
)

const jsonType = "application/json"

// TestUpdateEachField patches one customer per case and checks the answer,
// a fresh GET, and that nothing else changed (opt-outs included).
func TestUpdateEachField(t *testing.T) {
	t.Parallel()
	v := newEnv(t, "KE", HandlerOptions{})
	tests := []struct {
		name   string
		body   string
		change func(*Customer)
	}{
		{"phone, national form normalised", `{"phone":"0712 000 901"}`, func(c *Customer) { c.Phone = "+254712000901" }},
		{"first_name trimmed", `{"first_name":"  Zoë 🌟 "}`, func(c *Customer) { c.FirstName = "Zoë 🌟" }},
		{"last_name", `{"last_name":"Otieno"}`, func(c *Customer) { c.LastName = "Otieno" }},
		{"location", `{"location":"Mombasa"}`, func(c *Customer) { c.Location = "Mombasa" }},
		{"preferred_product", `{"preferred_product":"Sandals"}`, func(c *Customer) { c.PreferredProduct = "Sandals" }},
		{"first_name cleared", `{"first_name":""}`, func(c *Customer) { c.FirstName = "" }},
		{"null clears as in create", `{"location":null}`, func(c *Customer) { c.Location = "" }},
		{"several at once", `{"last_name":"Kamau","location":" Kisumu ","phone":"+254 712 000 902"}`, func(c *Customer) {
			c.LastName, c.Location, c.Phone = "Kamau", "Kisumu", "+254712000902"
		}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			before, err := v.svc.Create(ctx, Input{Phone: phone(100 + i), FirstName: "Alice", LastName: "Wanjiru",
				Location: "Nairobi", PreferredProduct: "Shoes"})
			if err != nil {
				t.Fatal(err)
			}
			if before, err = v.svc.OptOut(ctx, before.ID, channel.WhatsApp); err != nil {
				t.Fatal(err)
			}
			target := fmt.Sprintf("/customers/%d", before.ID)
			got := decodeBody[Customer](t, v.do(t, http.MethodPatch, target, jsonType, tt.body), http.StatusOK)

			want := before
			tt.change(&want)
			if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(Customer{}, "UpdatedAt")); diff != "" {
				t.Errorf("PATCH %s (-want +got):\n%s", tt.body, diff)
			}
			if got.UpdatedAt.Before(before.UpdatedAt) {
				t.Errorf("updated_at went back: %v, was %v", got.UpdatedAt, before.UpdatedAt)
			}
			again := decodeBody[Customer](t, v.do(t, http.MethodGet, target, "", ""), http.StatusOK)
			if diff := cmp.Diff(got, again); diff != "" {
				t.Errorf("GET after PATCH (-patch +get):\n%s", diff)
			}
		})
	}
}

// TestUpdatePhoneConflict: a phone another customer has, however written,
// is 409 CUSTOMER_PHONE_EXISTS as at create, and nothing of the request is
// applied; a customer's own phone is no conflict.
func TestUpdatePhoneConflict(t *testing.T) {
	t.Parallel()
	v := newEnv(t, "KE", HandlerOptions{})
	ctx := context.Background()
	a, err := v.svc.Create(ctx, Input{Phone: "+254712345678", FirstName: "Alice"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := v.svc.Create(ctx, Input{Phone: phone(2), FirstName: "Bob"})
	if err != nil {
		t.Fatal(err)
	}

	rec := v.do(t, http.MethodPatch, fmt.Sprintf("/customers/%d", b.ID), jsonType,
		`{"first_name":"Robert","phone":"0712 345 678"}`)
	env := wantError(t, rec, http.StatusConflict, "CUSTOMER_PHONE_EXISTS")
	if got := env.Error.Details["customer_id"]; got != float64(a.ID) {
		t.Errorf("details.customer_id = %v, want %d", got, a.ID)
	}
	if got := env.Error.Details["field"]; got != "phone" {
		t.Errorf("details.field = %v, want phone", got)
	}
	if got, _ := v.svc.Get(ctx, b.ID); got.Phone != b.Phone || got.FirstName != "Bob" {
		t.Errorf("after the conflict customer %d is %+v, want unchanged", b.ID, got)
	}

	if _, err := v.svc.Update(ctx, b.ID, UpdateInput{Phone: Optional{Set: true, Value: "712345678"}}); !errors.Is(err, ErrPhoneTaken) {
		t.Errorf("Update(taken phone) = %v, want ErrPhoneTaken", err)
	}

	// Its own phone, written another way, is the same phone.
	got := decodeBody[Customer](t, v.do(t, http.MethodPatch, fmt.Sprintf("/customers/%d", a.ID), jsonType,
		`{"phone":"0712345678","first_name":"Alicia"}`), http.StatusOK)
	if got.Phone != a.Phone || got.FirstName != "Alicia" {
		t.Errorf("patching a customer's own phone gave %+v", got)
	}
}

// TestUpdateValidationParity sends each bad value to POST /customers and to
// PATCH /customers/{id}: both must refuse it the same way (status, code,
// field and message), since there is one set of rules. Create's body also
// carries a valid phone, unless the case is about the phone.
func TestUpdateValidationParity(t *testing.T) {
	t.Parallel()
	v := newEnv(t, "KE", HandlerOptions{})
	ctx := context.Background()
	cust, err := v.svc.Create(ctx, Input{Phone: phone(1), FirstName: "Alice", Location: "Nairobi"})
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("é", MaxFieldLen+1)
	tests := []struct {
		name   string
		fields string // the members of the JSON object, without braces
		code   string
		field  string
	}{
		{"phone invalid", `"phone":"12345"`, "VALIDATION_ERROR", "phone"},
		{"phone empty", `"phone":""`, "VALIDATION_ERROR", "phone"},
		{"phone blank", `"phone":"   "`, "VALIDATION_ERROR", "phone"},
		{"phone null", `"phone":null`, "VALIDATION_ERROR", "phone"},
		{"phone national of another region", `"phone":"(202) 555-0123"`, "VALIDATION_ERROR", "phone"},
		{"phone with extension", `"phone":"+1 202 555 0123 ext 5"`, "VALIDATION_ERROR", "phone"},
		{"phone too long", `"phone":"` + strings.Repeat("1", 65) + `"`, "VALIDATION_ERROR", "phone"},
		{"phone wrong type", `"phone":254712345678`, "INVALID_JSON", "phone"},
		{"first_name too long", `"first_name":"` + long + `"`, "VALIDATION_ERROR", "first_name"},
		{"first_name right-to-left override", `"first_name":"Ali\u202Ece"`, "VALIDATION_ERROR", "first_name"},
		{"first_name wrong type", `"first_name":["a"]`, "INVALID_JSON", "first_name"},
		{"last_name NUL", `"last_name":"a\u0000b"`, "VALIDATION_ERROR", "last_name"},
		{"last_name line break", `"last_name":"a\nb"`, "VALIDATION_ERROR", "last_name"},
		{"location control character", `"location":"a\u001bb"`, "VALIDATION_ERROR", "location"},
		{"location wrong type", `"location":1`, "INVALID_JSON", "location"},
		{"preferred_product too long", `"preferred_product":"` + long + `"`, "VALIDATION_ERROR", "preferred_product"},
		{"preferred_product isolate", `"preferred_product":"x\u2066y"`, "VALIDATION_ERROR", "preferred_product"},
		{"first invalid field in create's order", `"location":"\u0000","first_name":"\u0000"`, "VALIDATION_ERROR", "first_name"},
		{"unknown field", `"email":"a@b.c"`, "INVALID_JSON", "email"},
		{"duplicate key", `"last_name":"a","last_name":"b"`, "INVALID_JSON", "last_name"},
		{"upper-case key", `"FIRST_NAME":"a"`, "INVALID_JSON", "FIRST_NAME"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			createBody := "{" + tt.fields + "}"
			if !strings.Contains(tt.fields, `"phone"`) {
				createBody = `{"phone":"` + phone(99) + `",` + tt.fields + "}"
			}
			created := wantError(t, v.do(t, http.MethodPost, "/customers", jsonType, createBody), http.StatusBadRequest, tt.code)
			patched := wantError(t, v.do(t, http.MethodPatch, fmt.Sprintf("/customers/%d", cust.ID), jsonType, "{"+tt.fields+"}"),
				http.StatusBadRequest, tt.code)
			if got := patched.Error.Details["field"]; got != tt.field {
				t.Errorf("PATCH details.field = %v, want %q (message %q)", got, tt.field, patched.Error.Message)
			}
			if diff := cmp.Diff(created.Error, patched.Error); diff != "" {
				t.Errorf("POST and PATCH disagree (-POST +PATCH):\n%s", diff)
			}
		})
	}
	t.Cleanup(func() {
		if got, err := v.svc.Get(ctx, cust.ID); err != nil || !cmp.Equal(got, cust) {
			t.Errorf("after bad requests the customer is %+v (%v), want unchanged %+v", got, err, cust)
		}
		if n := v.count(t); n != 1 {
			t.Errorf("%d customers stored by bad requests, want 1", n)
		}
	})
}

// TestUpdateNothingOrNobody: a request that names no field is 400 (checked
// before the customer is looked up), an unknown customer 404, a bad id or
// media type refused as elsewhere.
func TestUpdateNothingOrNobody(t *testing.T) {
	t.Parallel()
	v := newEnv(t, "KE", HandlerOptions{})
	cust, err := v.svc.Create(context.Background(), Input{Phone: phone(1)})
	if err != nil {
		t.Fatal(err)
	}
	target := fmt.Sprintf("/customers/%d", cust.ID)
	tests := []struct {
		name, target, contentType, body string
		status                          int
		code, field                     string
	}{
		{"no body", target, "", "", 400, "VALIDATION_ERROR", "body"},
		{"empty JSON body", target, jsonType, "", 400, "VALIDATION_ERROR", "body"},
		{"white space", target, jsonType, " \r\n\t", 400, "VALIDATION_ERROR", "body"},
		{"empty object", target, jsonType, "{}", 400, "VALIDATION_ERROR", "body"},
		{"null", target, jsonType, "null", 400, "VALIDATION_ERROR", "body"},
		{"empty object, unknown customer", "/customers/999999", jsonType, "{}", 400, "VALIDATION_ERROR", "body"},
		{"unknown customer", "/customers/999999", jsonType, `{"first_name":"x"}`, 404, "CUSTOMER_NOT_FOUND", ""},
		{"bad id", "/customers/abc", jsonType, `{"first_name":"x"}`, 400, "VALIDATION_ERROR", "id"},
		{"array body", target, jsonType, `[{"first_name":"x"}]`, 400, "INVALID_JSON", ""},
		{"trailing data", target, jsonType, `{"first_name":"x"} {}`, 400, "INVALID_JSON", ""},
		{"text/plain", target, "text/plain", `{"first_name":"x"}`, 415, "UNSUPPORTED_MEDIA_TYPE", ""},
		{"body without content type", target, "", `{"first_name":"x"}`, 415, "UNSUPPORTED_MEDIA_TYPE", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := wantError(t, v.do(t, http.MethodPatch, tt.target, tt.contentType, tt.body), tt.status, tt.code)
			if tt.field != "" && env.Error.Details["field"] != tt.field {
				t.Errorf("details.field = %v, want %q (message %q)", env.Error.Details["field"], tt.field, env.Error.Message)
			}
		})
	}
	if _, err := v.svc.Update(context.Background(), 999999, UpdateInput{LastName: Optional{Set: true}}); !errors.Is(err, ErrNotFound) {
		t.Errorf("Update(unknown) = %v, want ErrNotFound", err)
	}
}
