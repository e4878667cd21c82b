package customer

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/campaignd/dispatch/platform/errs"
)

// This file reads the body of POST /customers/import into rows. Decoding
// problems (the body is not a JSON array or CSV at all) are reported at once;
// problems with the values of rows are left to Service.Import, which reports
// them all together.

// csvColumns are the columns a CSV import may have, in any order.
var csvColumns = []string{"phone", "first_name", "last_name", "location", "preferred_product"}

// readJSON reads a JSON array of customer objects, one element at a time so
// that a body with more than maxRows rows is refused as soon as row
// maxRows+1 starts, without decoding the rest. Unknown fields are rejected.
func readJSON(body io.Reader, maxRows int) ([]ImportRow, error) {
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	tok, err := dec.Token()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errs.InvalidJSON("request body is empty; a JSON array of customers is required")
		}
		return nil, jsonError(err, -1)
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return nil, errs.InvalidJSON("request body must be a JSON array of customer objects")
	}
	var rows []ImportRow
	for i := 0; dec.More(); i++ {
		if i == maxRows {
			return nil, errTooManyRows(maxRows)
		}
		var in Input
		if err := dec.Decode(&in); err != nil {
			return nil, jsonError(err, i)
		}
		rows = append(rows, ImportRow{Input: in})
	}
	if _, err := dec.Token(); err != nil { // the closing ']'
		return nil, jsonError(err, -1)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, jsonError(err, -1)
		}
		return nil, errs.InvalidJSON("request body must hold a single JSON array")
	}
	return rows, nil
}

// jsonError turns a decoding error of row i (-1: outside any row) into the
// API's error, naming the row and field where it can.
func jsonError(err error, i int) error {
	var mbe *http.MaxBytesError
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &mbe):
		return errTooLarge(mbe.Limit)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return errs.InvalidJSON("request body is truncated JSON")
	case errors.As(err, &syn):
		return errs.InvalidJSON("malformed JSON at byte %d", syn.Offset)
	case errors.As(err, &typ) && i >= 0:
		if typ.Field == "" {
			return errs.InvalidJSON("row %d must be a JSON object, not %s", i, typ.Value).WithDetail("index", i)
		}
		return errs.InvalidJSON("row %d: field %q must be a string, not %s", i, typ.Field, typ.Value).
			WithDetail("index", i).WithDetail("field", typ.Field)
	case strings.HasPrefix(err.Error(), "json: unknown field ") && i >= 0:
		field := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return errs.InvalidJSON("row %d: unknown field %q", i, field).
			WithDetail("index", i).WithDetail("field", field)
	}
	return errs.InvalidJSON("invalid JSON: %v", err)
}

// readCSV reads CSV whose first line names the columns (csvColumns, any
// order and case; phone required). Each row keeps the file line it starts
// on, so problems can be reported where the client will look for them.
func readCSV(body io.Reader, maxRows int) ([]ImportRow, error) {
	r := csv.NewReader(body)
	r.ReuseRecord = true // fields are fresh strings; only the slice is reused
	header, err := r.Read()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errs.Validation("header", "CSV body is empty; its first line must name the columns (%s)",
				strings.Join(csvColumns, ", "))
		}
		return nil, csvError(err)
	}
	col := make(map[string]int, len(header))
	for i, name := range header {
		if i == 0 {
			name = strings.TrimPrefix(name, "\ufeff") // spreadsheets often start the file with a BOM
		}
		name = strings.ToLower(strings.TrimSpace(name))
		if !slices.Contains(csvColumns, name) {
			return nil, errs.Validation("header", "unknown CSV column %q; the columns are %s",
				name, strings.Join(csvColumns, ", "))
		}
		if _, dup := col[name]; dup {
			return nil, errs.Validation("header", "CSV column %q appears twice", name)
		}
		col[name] = i
	}
	if _, ok := col["phone"]; !ok {
		return nil, errs.Validation("header", "CSV header must include a phone column")
	}
	field := func(rec []string, name string) string {
		if i, ok := col[name]; ok {
			return rec[i]
		}
		return ""
	}

	var rows []ImportRow
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			return rows, nil
		}
		if err != nil {
			return nil, csvError(err)
		}
		if len(rows) == maxRows {
			return nil, errTooManyRows(maxRows)
		}
		line, _ := r.FieldPos(0)
		rows = append(rows, ImportRow{Line: line, Input: Input{
			Phone:            field(rec, "phone"),
			FirstName:        field(rec, "first_name"),
			LastName:         field(rec, "last_name"),
			Location:         field(rec, "location"),
			PreferredProduct: field(rec, "preferred_product"),
		}})
	}
}

// csvError turns a CSV reading error into the API's error.
func csvError(err error) error {
	var mbe *http.MaxBytesError
	var pe *csv.ParseError
	switch {
	case errors.As(err, &mbe):
		return errTooLarge(mbe.Limit)
	case errors.As(err, &pe):
		msg := pe.Err.Error()
		if errors.Is(pe.Err, csv.ErrFieldCount) {
			msg = "it has a different number of fields than the header"
		}
		return errs.Validation("csv", "malformed CSV at line %d: %s", pe.Line, msg).WithDetail("line", pe.Line)
	}
	// The body could not be read at all, e.g. the client went away.
	return errs.Validation("body", "reading the request body failed: %v", err)
}

func errTooLarge(limit int64) error {
	return errs.New(errs.KindTooLarge, errs.CodeTooLarge,
		fmt.Sprintf("import body is larger than the %d-byte limit; split it into several imports", limit))
}

func errTooManyRows(limit int) error {
	return errs.Validation("rows", "an import may hold at most %d rows; split it into several imports", limit)
}
